"""Small file rules every writer shares: keep a replaced file's mode, never write over an input, and say what an
operating-system error means for the file at hand (which path, what to do)."""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from icl_toolkit.core.errors import ConfigError, FileAccessError

__all__ = ["keep_mode", "check_not_input", "describe_os_error", "os_error", "load_settings_file"]


def keep_mode(target: str | os.PathLike[str], tmp: str | os.PathLike[str]) -> None:
    """Give ``tmp`` (about to be renamed over ``target``) the mode ``target`` has, or, for a new file, the mode a
    plain ``open`` would give it (``0o666`` less the umask; a temporary file is created ``0o600``)."""
    try:
        mode = os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.chmod(tmp, mode)


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_not_input(
    out: str | os.PathLike[str], inputs: Mapping[str, str | os.PathLike[str] | None], *, what: str = "the output"
) -> None:
    """Refuse an output path that is one of the run's input files (by flag name)."""
    out = Path(out)
    for flag, path in inputs.items():
        if path is not None and (_same(out, Path(path)) or out.resolve() == Path(path).resolve()):
            raise ConfigError(
                f"{out} is both {flag} and {what}; writing would destroy the input. Choose another output file."
            )


_ADVICE = {
    errno.ENOSPC: "no space left on the device: free some space there or write to another disk",
    errno.EDQUOT: "the disk quota is used up: free some space or write to another disk",
    errno.EROFS: "the file system is read-only: write to another folder",
    errno.EACCES: "permission denied: write to a folder you may write to, or fix the permissions",
    errno.EPERM: "operation not permitted: write to a folder you may write to, or fix the permissions",
    errno.ENOENT: "no such file or folder: check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "it is a folder, not a file: name a file",
    errno.EEXIST: "a file is in the way where a folder is needed: choose another path or move the file",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) and run again",
}


def describe_os_error(exc: OSError, path: str | os.PathLike[str] | None = None, doing: str | None = None) -> str:
    """One line naming the file, what was being done, what went wrong and what to do about it."""
    where = path if path is not None else (exc.filename if exc.filename is not None else None)
    target = f" {where}" if where is not None else ""
    while_ = f" while {doing}" if doing else ""
    reason = _ADVICE.get(exc.errno or -1, exc.strerror or str(exc) or type(exc).__name__)
    return f"cannot access{target}{while_}: {reason}."


def os_error(exc: OSError, path: str | os.PathLike[str] | None = None, doing: str | None = None) -> FileAccessError:
    """The toolkit's error for an operating-system error on ``path`` (see :func:`describe_os_error`)."""
    return FileAccessError(describe_os_error(exc, path, doing))


def load_settings_file(path: str | os.PathLike[str], model: Any, what: str, fields: str) -> Any:
    """Read a small TOML (or, by suffix, JSON) settings file into the pydantic ``model``.

    A missing file, a syntax error or a bad field is a :class:`ConfigError` naming the file (and the field, with
    the model's message and ``fields``: the fields and sections the file may have).
    """
    import json
    import tomllib

    from pydantic import ValidationError

    path = Path(path)
    is_json = path.suffix.lower() == ".json"
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if is_json else tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no {what} here (file not found).") from None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid {'JSON' if is_json else 'TOML'} ({exc}).") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "-"
        raise ConfigError(f"{path}: {where}: {err['msg']}. {fields}") from None
