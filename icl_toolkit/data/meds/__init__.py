"""MEDS datasets and ACES tasks: read them as cohort records, write cohorts and predictions as MEDS.

- :mod:`~icl_toolkit.data.meds.codes`: MEDS codes -> event kinds and systems; the ``--code-map`` file;
- :mod:`~icl_toolkit.data.meds.read`: MEDS root + ACES label file -> records, streamed (``icl data from-meds``);
- :mod:`~icl_toolkit.data.meds.write`: records -> MEDS root + label file (``icl data to-meds``);
- :mod:`~icl_toolkit.data.meds.predictions`: predictions in the meds-evaluation schema (``icl predict --format meds``).
"""

from __future__ import annotations

from icl_toolkit.data.meds.codes import INDEX_CODE, CodeMap, load_code_map
from icl_toolkit.data.meds.predictions import PREDICTION_COLUMNS, write_meds_predictions
from icl_toolkit.data.meds.read import MedsCohort, open_meds, read_labels
from icl_toolkit.data.meds.write import MedsExportSummary, subject_key, write_meds

__all__ = [
    "INDEX_CODE",
    "CodeMap",
    "load_code_map",
    "MedsCohort",
    "open_meds",
    "read_labels",
    "MedsExportSummary",
    "write_meds",
    "subject_key",
    "PREDICTION_COLUMNS",
    "write_meds_predictions",
]
