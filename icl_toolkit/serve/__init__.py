"""``icl serve``: an HTTP service for a prompted predictor (settings, schemas, a service layer, routers)."""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "ServerSettings", "PredictionService", "BatchSettings"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from icl_toolkit.serve.app import create_app

        return create_app
    if name in ("ServerSettings", "BatchSettings"):
        from icl_toolkit.serve import config

        return getattr(config, name)
    if name == "PredictionService":
        from icl_toolkit.serve.service import PredictionService

        return PredictionService
    raise AttributeError(name)
