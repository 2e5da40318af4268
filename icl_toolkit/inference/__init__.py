"""Prompted prediction: the one spec, the predictor, the one resumable run loop.

- :mod:`~icl_toolkit.inference.config`: :class:`PredictConfig`, the validated spec every front end builds;
- :mod:`~icl_toolkit.inference.predictor`: :class:`Predictor` (``fit`` / ``predict_proba`` / ``predict``);
- :mod:`~icl_toolkit.inference.output`: the output file rules (:class:`OutputFile`) and their reader;
- :mod:`~icl_toolkit.inference.run`: the resumable run loop and :func:`predict_file` (local or on Ray).
"""
