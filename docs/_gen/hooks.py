"""MkDocs hooks: the reference pages that are generated from the code, and the figures the results pages show.

Every build (``make docs``) regenerates, so the site cannot drift from the code:

- ``reference/cli.md``: every ``icl`` command, its options (name, type, default, help) from the Typer app;
- ``reference/config.md``: every key of every config file and option group from the pydantic models (name, type,
  default, docstring), the same fields the flags are generated from;
- ``reference/http.md``: the routes of ``icl serve`` from the app's OpenAPI schema;
- ``figures/...``: the committed result figures under ``results/`` and ``benchmarks/results/``, linked by the
  results pages.

None of these is written into ``docs/``: they are added to the build as generated files.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
FIGURE_DIRS = ("results", "benchmarks/results")


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# --------------------------------------------------------------------------- CLI


def _command_rows(cmd: Any) -> list[str]:
    import click

    rows = ["| option | type | default | help |", "|---|---|---|---|"]
    for p in cmd.params:
        if not isinstance(p, click.Option) or p.hidden:
            continue
        names = " / ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
        kind = p.type.name if not isinstance(p.type, click.Choice) else " \\| ".join(map(str, p.type.choices))
        if p.is_flag:
            kind = "flag"
        default = "" if p.required else ("" if p.default is None else f"`{p.default}`")
        if p.required:
            default = "required"
        rows.append(f"| {names} | {_cell(kind)} | {_cell(default)} | {_cell(p.help or '')} |")
    return rows


def cli_reference() -> str:
    import click
    import typer.main

    from icl_toolkit.cli import app

    root = typer.main.get_command(app)
    out = ["# Command line reference", "",
           "Generated from the `icl` Typer app at every build. Options of a config (retrieval, prompt, engine, Ray, "
           "teacher, fine-tuning, server) are the fields of its pydantic model: see the "
           "[configuration reference](config.md) for their ranges.", ""]

    def walk(cmd: Any, path: list[str]) -> None:
        if isinstance(cmd, click.Group):
            for name in sorted(cmd.commands):
                walk(cmd.commands[name], [*path, name])
            return
        title = " ".join(path)
        out.extend([f"## `{title}`", "", inspect.cleandoc(cmd.help or "").split("\n\n")[0], "",
                    "```", f"{title} [OPTIONS]", "```", "", *_command_rows(cmd), ""])

    walk(root, ["icl"])
    return "\n".join(out)


# --------------------------------------------------------------------------- configs


def _models() -> list[tuple[str, type, str]]:
    from icl_toolkit.backends.options import EngineOptions
    from icl_toolkit.data.omop.build import IndexRule, OmopConfig
    from icl_toolkit.data.synth import SynthConfig
    from icl_toolkit.evaluation.card import ModelCard
    from icl_toolkit.evaluation.compare.config import ArmSpec, CompareConfig
    from icl_toolkit.inference.config import PredictConfig
    from icl_toolkit.inference.ray import RayOptions
    from icl_toolkit.prompting.config import PromptConfig
    from icl_toolkit.rationales.config import TeacherConfig
    from icl_toolkit.retrieval.config import RetrievalConfig
    from icl_toolkit.serve.config import BatchSettings, ServerSettings
    from icl_toolkit.training.config import FinetuneConfig

    return [
        ("PredictConfig", PredictConfig, "The one spec of a prediction: `icl predict`'s flags, `arms.toml`, "
                                         "`icl serve`, `icl.PredictConfig.from_options(...)`."),
        ("RetrievalConfig", RetrievalConfig, "How demonstrations are chosen (the spec's `retrieval` section)."),
        ("PromptConfig", PromptConfig, "How prompts are laid out and packed (the spec's `prompt` section)."),
        ("EngineOptions", EngineOptions, "Which backend runs the model (flags of every predicting command; "
                                         "`[engine]` in `arms.toml`)."),
        ("RayOptions", RayOptions, "Where and how wide `--engine ray` goes."),
        ("CompareConfig", CompareConfig, "`arms.toml` of `icl compare`: its top-level keys and tables."),
        ("ArmSpec", ArmSpec, "One `[[arm]]` table of `arms.toml` (a list in a setting expands into one arm per "
                             "value)."),
        ("ModelCard", ModelCard, "The `[card]` table of `arms.toml` and `icl serve --card`."),
        ("FinetuneConfig", FinetuneConfig, "`icl finetune`'s settings."),
        ("TeacherConfig", TeacherConfig, "`icl rationales generate`'s settings."),
        ("ServerSettings", ServerSettings, "`icl serve`'s request limits."),
        ("BatchSettings", BatchSettings, "`icl serve`'s micro-batching."),
        ("SynthConfig", SynthConfig, "`icl data synth`'s settings."),
        ("OmopConfig", OmopConfig, "`icl data from-omop`'s settings."),
        ("IndexRule", IndexRule, "How `icl data from-omop` places each person's index date."),
    ]


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "").replace("Literal", "one of ").replace("NoneType", "None")


def config_reference() -> str:
    from pydantic import BaseModel

    out = ["# Configuration reference", "",
           "Every key of every config, generated from the pydantic models at every build: the same fields, "
           "defaults and docstrings the command-line flags are made of. Unknown keys are refused, with the closest "
           "known names.", ""]
    for name, model, what in _models():
        out.extend([f"## {name}", "", what, ""])
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        out.extend(["| key | type | default | meaning |", "|---|---|---|---|"])
        for field, info in model.model_fields.items():
            if info.is_required():
                default = "required"
            else:
                value = info.get_default(call_default_factory=True)
                default = f"`{value!r}`" if not isinstance(value, BaseModel) else "(its defaults)"
            limits = [f"{sym} {getattr(m, attr)}" for m in info.metadata
                      for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if hasattr(m, attr)]
            meaning = " ".join((info.description or "").split())
            if limits:
                meaning += f" ({', '.join(limits)})"
            out.append(f"| `{field}` | {_cell(_type_name(info.annotation))} | {_cell(default)} | {_cell(meaning)} |")
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- HTTP


def http_reference() -> str:
    from icl_toolkit.serve.app import create_app

    schema = create_app(lambda: None).openapi()  # type: ignore[arg-type, return-value]
    out = ["# HTTP API reference", "",
           "Generated from `icl serve`'s OpenAPI schema at every build (a running server also serves it at "
           "`/openapi.json` and `/docs`). Errors share one shape: `{\"request_id\", \"error\", \"detail\"}`.", ""]
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            out.extend([f"## `{method.upper()} {path}`", "", " ".join((op.get("description") or op.get("summary")
                                                                     or "").split()), "",
                        "| status | meaning |", "|---|---|"])
            for code, resp in op.get("responses", {}).items():
                out.append(f"| {code} | {_cell(resp.get('description', ''))} |")
            out.append("")
    comps = schema.get("components", {}).get("schemas", {})
    for name in ("PredictRequest", "PredictOptions", "Outcome", "FeedbackRequest", "Info"):
        if name not in comps:
            continue
        out.extend([f"## `{name}`", "", "| field | type | meaning |", "|---|---|---|"])
        for field, prop in comps[name].get("properties", {}).items():
            kind = prop.get("type") or prop.get("$ref", "").rsplit("/", 1)[-1] or "see schema"
            out.append(f"| `{field}` | {_cell(kind)} | {_cell(' '.join((prop.get('description') or '').split()))} |")
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- hook


def on_files(files: Files, config: Any) -> Files:
    for uri, make in (("reference/cli.md", cli_reference), ("reference/config.md", config_reference),
                      ("reference/http.md", http_reference)):
        files.append(File.generated(config, uri, content=make()))
    for folder in FIGURE_DIRS:
        for png in sorted((ROOT / folder).rglob("*.png")):
            files.append(File.generated(config, f"figures/{png.relative_to(ROOT).as_posix()}", abs_src_path=str(png)))
    return files
