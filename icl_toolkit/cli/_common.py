"""Shared pieces of the CLI: consoles and progress bars."""

from __future__ import annotations

from rich.console import Console

from icl_toolkit.progress import progress_bar, stderr_console

__all__ = ["console", "err_console", "progress_bar"]

console = Console(soft_wrap=True)
err_console = stderr_console
