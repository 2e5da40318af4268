"""One router per feature of ``icl serve``: health, info, predict, feedback, metrics. Each reads the typed
application state (:class:`~icl_toolkit.serve.state.ServerState`) and hands the work to the service layer."""

from icl_toolkit.serve.routers import feedback, health, info, metrics, predict

ROUTERS = (health.router, info.router, predict.router, feedback.router, metrics.router)

__all__ = ["ROUTERS"]
