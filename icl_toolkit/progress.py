"""Progress bars for long library work (embedding, scoring, generation), on stderr.

One bar per stage with a ``desc``; ``enabled=False`` (or a non-interactive use
that asks for silence) turns it into a no-op so library callers and tests stay quiet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["progress_bar", "stderr_console"]

stderr_console = Console(stderr=True, soft_wrap=True)


@contextmanager
def progress_bar(desc: str, total: int, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr; yields ``advance(n=1, note=None)`` (``note`` is shown after ``desc``)."""
    if not enabled:
        yield lambda n=1, note=None: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=stderr_console, transient=False) as bar:
        task = bar.add_task(desc, total=total)

        def advance(n: int = 1, note: str | None = None) -> None:
            bar.update(task, advance=n, description=f"{desc} {note}" if note else desc)

        yield advance
