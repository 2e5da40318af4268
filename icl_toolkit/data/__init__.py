"""Patient records and where they come from.

- :mod:`~icl_toolkit.data.cohort`: ``Patient`` / ``Event`` records, the cohort file's validation, writing;
- :mod:`~icl_toolkit.data.vocabulary`: the clinical vocabulary every data path shares;
- :mod:`~icl_toolkit.data.serialize`: a history as text within a token budget; the condensed profile;
- :mod:`~icl_toolkit.data.describe`: cohort statistics and the overview plot;
- :mod:`~icl_toolkit.data.summary`: what an importer kept and dropped, one type for every importer;
- :mod:`~icl_toolkit.data.synth`, :mod:`~icl_toolkit.data.omop`, :mod:`~icl_toolkit.data.meds`: the synthetic
  cohort, the OMOP CDM import, MEDS datasets and ACES labels.
"""
