"""Exceptions raised by the library.

Every error a user can cause derives from :class:`IclError`; the CLI and the
HTTP service turn these into clean messages (never tracebacks).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "IclError",
    "InputIssue",
    "CohortValidationError",
    "ConfigError",
    "ModelNotFoundError",
    "FileAccessError",
]


class IclError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class ConfigError(IclError, ValueError):
    """A parameter or option has a value outside what is allowed."""


class ModelNotFoundError(IclError):
    """A model name or path could not be resolved without the network."""


class FileAccessError(IclError, OSError):
    """A file could not be read or written (full disk, read-only target, ...); the message names the file."""


@dataclass(frozen=True, slots=True)
class InputIssue:
    """One problem in an input file: where it is and what is wrong.

    Rendered as ``FILE:LINE: field: message`` (the line is 1-based; ``field``
    is a path such as ``events[3].date``, or ``-`` for the record as a whole, which is not printed:
    ``FILE:LINE: message``).
    """

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.message}" if self.field == "-" else f"{where}: {self.field}: {self.message}"


class CohortValidationError(IclError):
    """A cohort file has one or more invalid records.

    ``issues`` holds every problem found, not only the first.
    """

    def __init__(self, issues: list[InputIssue], *, shown: int = 20) -> None:
        self.issues = list(issues)
        head = "\n".join(str(i) for i in self.issues[:shown])
        more = len(self.issues) - shown
        files = sorted({i.file for i in self.issues})
        check = f"`icl data validate {files[0]}`" if len(files) == 1 else "`icl data validate FILE`"
        tail = f"\n... and {more} more ({check} lists them all)" if more > 0 else f"\nCheck a file with {check}."
        if len(self.issues) == 1:
            super().__init__(head + tail)
        else:
            super().__init__(f"{len(self.issues)} problems in cohort input:\n{head}{tail}")
