"""Progress bars for long library work (embedding, scoring, generation), on stderr.

One bar per stage with a ``desc``; ``enabled=False`` (or a non-interactive use
that asks for silence) turns it into a no-op so library callers and tests stay quiet.
When stderr is not a terminal (a job's log file), the bar becomes plain lines: one
every ``LOG_EVERY`` seconds at most, and one at the end, so a long run's log shows
where it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["progress_bar", "stderr_console"]

stderr_console = Console(stderr=True, soft_wrap=True)
LOG_EVERY = 60.0
"""Seconds between progress lines when stderr is not a terminal."""


@contextmanager
def _log_lines(desc: str, total: int, initial: int = 0) -> Iterator[Callable[..., None]]:
    start = last = time.monotonic()
    state: dict[str, Any] = {"done": initial, "note": None, "shown": None}

    def line() -> None:
        done, spent = state["done"], time.monotonic() - start
        state["shown"] = done
        rate = (done - initial) / spent if spent > 0 else 0.0  # this run's rate: work done before a resume is not
        eta = f", about {(total - done) / rate / 60:.0f} min left" if rate > 0 and done < total else ""
        note = f" {state['note']}" if state["note"] else ""
        stderr_console.print(f"{desc}{note}: {done}/{total} in {spent / 60:.1f} min{eta}", highlight=False)

    def advance(n: int = 1, note: str | None = None) -> None:
        nonlocal last
        state["done"] += n
        state["note"] = note
        if time.monotonic() - last >= LOG_EVERY:
            last = time.monotonic()
            line()

    yield advance
    if state["shown"] != state["done"]:  # the final count, unless the last periodic line already showed it
        line()


@contextmanager
def progress_bar(desc: str, total: int, enabled: bool = True, initial: int = 0) -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr; yields ``advance(n=1, note=None)`` (``note`` is shown after ``desc``).

    ``initial`` is work already done (a resumed run): it is counted as done but not in the rate behind the
    time left.
    """
    if not enabled:
        yield lambda n=1, note=None: None
        return
    if not stderr_console.is_terminal:
        with _log_lines(desc, total, initial) as advance:
            yield advance
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr_console,
        transient=False,
    ) as bar:
        task = bar.add_task(desc, total=total, completed=initial)

        def advance(n: int = 1, note: str | None = None) -> None:
            bar.update(task, advance=n, description=f"{desc} {note}" if note else desc)

        yield advance
