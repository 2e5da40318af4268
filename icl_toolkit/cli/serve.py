"""``icl serve``: the prompted predictor behind an HTTP API (FastAPI on uvicorn; the ``serve`` extra)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer

from icl_toolkit.backends.options import EngineOptions
from icl_toolkit.cli._common import (
    ModelOpt,
    TaskOpt,
    cohort_task,
    err_console,
    spec_from_flags,
    with_engine_flags,
    with_retriever_flags,
)
from icl_toolkit.cli._flags import FlagGroup, with_flags
from icl_toolkit.core.errors import ConfigError
from icl_toolkit.prompting.config import PromptConfig
from icl_toolkit.serve.config import BatchSettings, ServerSettings

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]


@with_engine_flags
@with_retriever_flags
@with_flags(
    "prompt_options", FlagGroup(PromptConfig, fields=("query_tokens", "demo_tokens", "orders", "show_risk")), build=dict
)
@with_flags("batching", FlagGroup(BatchSettings, rename={"enabled": "batching"}))
@with_flags(
    "limits",
    FlagGroup(
        ServerSettings,
        fields=("max_patients", "max_body_mb", "max_k", "max_demos", "max_request_tokens", "metrics_auth"),
    ),
    build=dict,
)
def serve(
    pool: Annotated[Optional[Path], typer.Option(help="Demonstration pool (cohort JSONL with labels).")] = None,
    index: Annotated[
        Optional[Path],
        typer.Option(help="Index folder from `icl index build` over --pool (built at start-up if absent)."),
    ] = None,
    model: ModelOpt = "default",
    task: TaskOpt = None,
    host: Annotated[
        str, typer.Option(help="Address to bind (loopback by default; 0.0.0.0 exposes the service).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    grace_seconds: Annotated[
        float,
        typer.Option(
            min=1,
            help="On SIGTERM: answer every request within this many seconds (finish, or 503 for what is still queued), then exit.",
        ),
    ] = 30.0,
    log_level: Annotated[
        LogLevel, typer.Option(help="Log level (request ids and timings; never patient data).")
    ] = "info",
    monitor_dir: Annotated[
        Optional[Path],
        typer.Option(
            help="Append one pseudonymous record per prediction here and take outcomes on POST /v1/feedback; report with `icl monitor --dir`."
        ),
    ] = None,
    monitor_key_file: Annotated[
        Optional[Path],
        typer.Option(
            help="Pseudonym key file (created, mode 0600, when absent; default MONITOR_DIR/../<name>.key, outside the log folder). ICL_MONITOR_KEY overrides it."
        ),
    ] = None,
    card: Annotated[
        Optional[Path],
        typer.Option(
            help="Model card fields (TOML or JSON: owner, contact, intended_use, out_of_scope_use, review_date), shown in /v1/info."
        ),
    ] = None,
    *,
    engine: EngineOptions,
    retriever_options: dict[str, Any],
    prompt_options: dict[str, Any],
    batching: BatchSettings,
    limits: dict[str, Any],
) -> None:
    """Serve `icl predict`'s predictor over HTTP: POST /v1/predict, GET /health, GET /v1/info, /docs."""
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError('icl serve needs FastAPI and uvicorn: pip install "icl-toolkit[serve]"') from None
    from icl_toolkit.backends.options import open_backend
    from icl_toolkit.core.files import load_settings_file
    from icl_toolkit.data.cohort import content_hash, read_cohort
    from icl_toolkit.evaluation.card import CARD_FIELDS, ModelCard
    from icl_toolkit.evaluation.monitor.log import MonitorLog, load_key
    from icl_toolkit.prompting.builder import task_question
    from icl_toolkit.retrieval.embedder import ProfileEmbedder
    from icl_toolkit.retrieval.gain import GAIN_FILE, GainScores
    from icl_toolkit.retrieval.index import DemoIndex
    from icl_toolkit.retrieval.representations import make_representation, needs_embedder
    from icl_toolkit.serve.app import create_app, make_server
    from icl_toolkit.serve.service import PredictionService

    if index is not None and pool is None:
        raise ConfigError("--index needs the --pool it was built from (the demos' records come from the pool).")
    the_task = cohort_task({"--pool": pool}, task)
    config = spec_from_flags(model, the_task, max_context=engine.max_context, **prompt_options, **retriever_options)
    demo_pool = read_cohort(pool) if pool is not None else []  # read before binding: a bad file fails here
    r = config.retrieval
    embedder = ProfileEmbedder() if demo_pool and needs_embedder(r.retriever, r.hybrid_weights) else None
    loaded_index = DemoIndex.load(index) if index is not None else None
    if loaded_index is not None:  # the server's retriever settings must be the index's
        loaded_index.check(demo_pool, make_representation(r, embedder, demo_pool), where=str(index))
    fields = load_settings_file(card, ModelCard, "model card", CARD_FIELDS) if card is not None else ModelCard()
    card_info = fields.as_info({"model": model, "pool": content_hash(demo_pool) if demo_pool else "none"}) | {
        "task": {"name": the_task.name, "question": task_question(config.prompt)}
    }
    monitor = None
    if monitor_dir is not None:  # opened before binding: an unwritable folder fails here
        key_file = monitor_key_file or monitor_dir.resolve().parent / f"{monitor_dir.resolve().name}.key"
        monitor = MonitorLog(
            monitor_dir,
            load_key(key_file),
            model={
                "model": model,
                "engine": engine.model_dump(mode="json", exclude_unset=True),
                "spec": config.model_dump(mode="json"),
            },
            pool=demo_pool,
        )

    # the index's gain scores serve requests with strategy "gain" (checked against the model when one asks)
    gain = GainScores.load_for(index) if index is not None and (index / GAIN_FILE).is_file() else None

    def load() -> PredictionService:
        lm = open_backend(model, engine, progress=False)
        return PredictionService(lm, demo_pool, loaded_index, config, embedder=embedder, batching=batching, gain=gain)

    settings = ServerSettings(api_key=os.environ.get("ICL_API_KEY") or None, **limits)
    logging.basicConfig(
        level="DEBUG" if log_level == "trace" else log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(
            f"warning: binding {host}: the service is reachable from other machines"
            + ("" if settings.api_key else " and ICL_API_KEY is not set (no authentication)"),
            highlight=False,
        )
    make_server(
        create_app(load, settings, monitor=monitor, card=card_info),
        host=host,
        port=port,
        log_level=log_level,
        grace_seconds=grace_seconds,
    ).run()
