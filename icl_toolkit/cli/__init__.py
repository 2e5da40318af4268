"""The ``icl`` command line: Typer apps, one module per command group, thin over the library.

Library errors (:class:`~icl_toolkit.core.errors.IclError`) and unreadable or
unwritable files end as a one-paragraph message on stderr (naming the file and
what to do) and exit code 1; anything else is a bug, reported as one line that
names the command and how to report it, with exit code 2 (``ICL_DEBUG=1``
shows the traceback). Never a traceback by default.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.markup import escape

from icl_toolkit.cli import compare, data, finetune, index, monitor, predict, rationales, report, serve
from icl_toolkit.cli._common import err_console
from icl_toolkit.core.errors import IclError
from icl_toolkit.core.files import describe_os_error

__all__ = ["app", "main"]

app = typer.Typer(
    name="icl",
    help="In-context demonstrations and prompting for clinical prediction from patient histories.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data.app, name="data")
app.add_typer(index.app, name="index")
app.add_typer(rationales.app, name="rationales")
app.add_typer(report.app, name="report")
app.command(name="predict")(predict.predict)
app.command(name="finetune")(finetune.finetune)
app.command(name="compare")(compare.compare)
app.command(name="serve")(serve.serve)
app.command(name="monitor")(monitor.monitor)


@app.callback()
def _root() -> None:
    """icl-toolkit: cohorts, retrieval of demonstrations, prompted prediction."""


def _command(argv: list[str]) -> str:
    """The command being run (``predict``, ``data validate``), for messages."""
    words: list[str] = []
    for arg in argv:
        if arg.startswith("-") or len(words) == 2:
            break
        words.append(arg)
    group = app.registered_groups
    if words and words[0] not in {g.name for g in group}:
        words = words[:1]
    return " ".join(["icl", *words])


HINTS = {
    "--shots": "--k",
    "--n-shots": "--k",
    "--num-shots": "--k",
    "--demonstrations": "--k",
    "--n-demos": "--k",
    "--num-demos": "--k",
    "--examples": "--k",
    "--checkpoint": "--model",
    "--ckpt": "--model",
    "--demo-pool": "--pool",
    "--input": "--cohort",
    "--output": "--out",
}
"""Options people reach for that the command line spells otherwise: the hint names the option to use."""


def _hint(argv: list[str]) -> str | None:
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name in HINTS:
            return f"no option {name}: use {HINTS[name]} (see `{_command(argv)} --help`)."
    return None


def _fail(message: str, code: int = 1) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
    sys.exit(code)


def main() -> None:
    """Entry point of the ``icl`` console script: errors end as one paragraph on stderr, never a traceback."""
    hint = _hint(sys.argv[1:])
    if hint is not None:
        _fail(hint, code=2)
    try:
        app()
    except IclError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(describe_os_error(exc))
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: a bug, said as one line
        if os.environ.get("ICL_DEBUG"):
            raise
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        _fail(
            f"{_command(sys.argv[1:])} stopped on an internal error ({type(exc).__name__}{': ' + detail if detail else ''}). "
            "This is a bug in icl-toolkit, not in your input: please report it to the icl-toolkit maintainers "
            "(issue tracker) with the command line and this message; run again with ICL_DEBUG=1 to print the "
            "traceback for the report.",
            code=2,
        )
