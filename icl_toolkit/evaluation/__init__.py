"""How good, how fair, how it drifts.

- :mod:`~icl_toolkit.evaluation.metrics`: AUROC, AUPRC, Brier, ECE, F1; bootstrap CIs; paired DeLong;
- :mod:`~icl_toolkit.evaluation.baselines`: logistic regression, age only, the neighbours' vote, the oracle;
- :mod:`~icl_toolkit.evaluation.fairness`: subgroup metrics and gaps (fairlearn);
- :mod:`~icl_toolkit.evaluation.card`: model card ownership fields;
- :mod:`~icl_toolkit.evaluation.retrieval`: how much outcome signal each retriever's neighbours carry
  (``icl index eval``);
- :mod:`~icl_toolkit.evaluation.compare`: every arm and baseline on the same patients (``icl compare``);
- :mod:`~icl_toolkit.evaluation.monitor`: a served predictor's log and report (``icl monitor``).
"""
