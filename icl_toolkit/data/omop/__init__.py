"""OMOP CDM import: tables (CSV folder, DuckDB or SQLite) -> cohort records with index date, label and history.

- :mod:`~icl_toolkit.data.omop.source`: open a source as DuckDB views of text columns;
- :mod:`~icl_toolkit.data.omop.outcome`: the outcome concept set (ADRD by default);
- :mod:`~icl_toolkit.data.omop.build`: clean, name, place the index date, label, write.
"""

from __future__ import annotations

from icl_toolkit.data.omop.build import IndexRule, OmopCohort, OmopConfig, build_cohort, prepare_cohort
from icl_toolkit.data.omop.outcome import ADRD, OutcomeDefinition, load_outcome
from icl_toolkit.data.omop.source import OmopSource, open_source
from icl_toolkit.data.summary import ImportSummary

__all__ = [
    "ADRD",
    "OutcomeDefinition",
    "load_outcome",
    "OmopSource",
    "open_source",
    "IndexRule",
    "OmopConfig",
    "ImportSummary",
    "OmopCohort",
    "prepare_cohort",
    "build_cohort",
]
