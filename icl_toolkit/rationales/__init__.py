"""Teacher rationales and their grounding.

- :mod:`~icl_toolkit.rationales.teacher`: a teacher model writes rationales for labelled patients (batched,
  resumable);
- :mod:`~icl_toolkit.rationales.grounding`: each claim of a rationale (codes, dates, values, drugs) checked against
  the history.
"""
