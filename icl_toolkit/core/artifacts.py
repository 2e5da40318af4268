"""Metadata records for artefacts on disk (index, retrieval cache, predictions).

Every artefact carries a small JSON record: what made it, from which inputs
(content hashes) and with which model. :func:`check_meta` compares the record
with what the caller is about to combine it with and raises a clear error on any
mismatch, instead of silently mixing artefacts built from different inputs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.core.files import keep_mode, os_error

__all__ = [
    "text_hash",
    "base_meta",
    "write_json_atomic",
    "write_csv_rows",
    "read_json",
    "flatten",
    "meta_differences",
    "check_meta",
    "ArtifactMismatch",
]


class ArtifactMismatch(ConfigError):
    """An artefact on disk was built from other inputs than the ones given now."""


def text_hash(text: str) -> str:
    """A short hash of a prompt or any text."""
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def base_meta(kind: str) -> dict[str, Any]:
    """The fields every metadata record starts with."""
    from icl_toolkit.core import __version__

    return {
        "artifact": kind,
        "icl_toolkit": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file (the mode of a file
    replaced is kept)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=1)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        keep_mode(path, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise os_error(exc, path, "writing") from None


def write_csv_rows(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]], digits: int | None = None) -> None:
    """Rows of dicts as one CSV: the columns are every key in first-seen order (a row without one leaves it
    empty); floats rounded to ``digits`` when given."""
    import csv

    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow(
                r if digits is None else {k: round(v, digits) if isinstance(v, float) else v for k, v in r.items()}
            )


def read_json(path: str | os.PathLike[str], what: str) -> Any:
    """Read a JSON artefact file; a broken file is a clear error naming it."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no {what} here (file not found).") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not a valid {what} ({exc.msg}). Rebuild it.") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a valid {what} (not UTF-8 text: invalid byte at offset {exc.start}). Rebuild it."
        ) from None
    except RecursionError:
        raise ConfigError(f"{path}: not a valid {what} (JSON nested too deeply to read). Rebuild it.") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a folder, not a {what} file.") from None


def flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested record as dotted field names (``{"config": {"retrieval": {"k": 4}}}`` -> ``{"config.retrieval.k":
    4}``); an empty mapping is a value of its own."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out |= flatten(value, name + ".")
        else:
            out[name] = value
    return out


def meta_differences(
    meta: Mapping[str, Any], expected: Mapping[str, Any], *, verb: str = "built", ignore_missing: bool = False
) -> list[str]:
    """Each field, by its dotted name, where a metadata record differs from what is expected now:
    ``"config.retrieval.k: built with 4, now 8"``.

    Args:
        meta: the record on disk.
        expected: what the caller is about to combine it with.
        verb: how the record came about, for the message (``built``, ``made``).
        ignore_missing: fields the record lacks are not differences (a record that predates a setting); by
            default a field on either side only is one.
    """
    made, now = flatten(meta), flatten(expected)
    tops = {k.split(".", 1)[0] for k in now}
    names = list(now) + [k for k in made if k not in now and k.split(".", 1)[0] in tops and not ignore_missing]
    return [
        f"{k}: {verb} with {made.get(k)!r}, now {now.get(k)!r}"
        for k in names
        if (k in made or not ignore_missing) and made.get(k) != now.get(k)
    ]


def check_meta(
    meta: Mapping[str, Any],
    expected: Mapping[str, Any],
    *,
    what: str,
    where: str,
    fix: str,
    verb: str = "built",
    ignore_missing: bool = False,
) -> None:
    """Raise :class:`ArtifactMismatch` naming every field (by its dotted name) where an artefact's metadata differs
    from what the caller expects now (see :func:`meta_differences`).

    Raises:
        ArtifactMismatch: ``"{where}: this {what} does not match the inputs given now (field: built with X, now
            Y; ...). {fix}"``.
    """
    diffs = meta_differences(meta, expected, verb=verb, ignore_missing=ignore_missing)
    if diffs:
        raise ArtifactMismatch(f"{where}: this {what} does not match the inputs given now ({'; '.join(diffs)}). {fix}")
