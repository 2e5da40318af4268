"""The ``icl`` command line: Typer apps, one module per command group, thin over the library.

Library errors (:class:`~icl_toolkit.errors.IclError`) and unreadable files end
as a one-paragraph message on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from icl_toolkit.cli import compare, data, finetune, index, predict, rationales, serve
from icl_toolkit.cli._common import err_console
from icl_toolkit.errors import IclError

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
app.command(name="predict")(predict.predict)
app.command(name="finetune")(finetune.finetune)
app.command(name="compare")(compare.compare)
app.command(name="serve")(serve.serve)


@app.callback()
def _root() -> None:
    """icl-toolkit: cohorts, retrieval of demonstrations, prompted prediction."""


def main() -> None:
    """Entry point of the ``icl`` console script."""
    try:
        app()
    except IclError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True, soft_wrap=True)
        sys.exit(1)
    except OSError as exc:
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        err_console.print(f"[bold red]error:[/] cannot access{where}: {exc.strerror or exc}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
