"""``icl serve``: an HTTP service for a prompted predictor (schemas, a service object, thin routes)."""

from __future__ import annotations

__all__ = ["create_app", "ServerSettings", "PredictionService", "BatchSettings"]


def __getattr__(name: str):
    if name in ("create_app", "ServerSettings"):
        from icl_toolkit.serve import app

        return getattr(app, name)
    if name in ("PredictionService", "BatchSettings"):
        from icl_toolkit.serve import service

        return getattr(service, name)
    raise AttributeError(name)
