"""Where a run's records go, and the one reader of what it wrote: a JSONL file, or a folder of shards.

``icl predict``, ``icl rationales generate`` and every arm of ``icl compare`` write records (one JSON object per
line, keyed by ``patient_id``) as chunks finish. Two shapes share one set of rules, written once in
:class:`RunOutput`:

- :class:`OutputFile`: one JSONL file with a settings sidecar ``<out>.meta.json`` (single-process runs);
- :class:`ShardedOutput`: a folder of JSONL shards listed by ``manifest.json`` (runs spread over many workers).

The rules:

- **New output**: nothing is written until the first chunk of records is; an error before that leaves no file
  behind.
- **An existing output** is refused unless ``resume`` or ``overwrite``.
- **Resume**: the recorded settings (sidecar or manifest) must match the settings, model and inputs given now
  (else refused, naming the field and the fix); what a killed run left half-written is dropped (a torn last line;
  a shard written but never listed); finished patients are skipped.
- **Overwrite**: the old output stays as it was until the new run has written its first chunk, so a run that
  fails early (a prompt that cannot fit, a model that does not load) leaves the old results. A replaced file's
  mode is kept.
- **Exactly once**: a patient already written is an error, never a duplicate record.
- **The output is not an input**: ``--out`` naming the cohort or the pool is refused before anything is read from
  it; a file where a folder of shards is expected (and the reverse) is refused too.
- **One reader**: complete lines only. A torn last line is not a record (it is cut when the file is resumed); a
  complete line that is not a JSON object with a ``patient_id`` is an error naming ``FILE:LINE``.

A shard is written to a temporary file, renamed into place, and only then added to the manifest (itself replaced
atomically), so a driver killed at any moment leaves every patient either in a listed shard or in none.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from icl_toolkit.core.artifacts import base_meta, check_meta, read_json, write_json_atomic
from icl_toolkit.core.errors import ConfigError
from icl_toolkit.core.files import check_not_input, keep_mode, os_error
from icl_toolkit.core.models import recorded_model_id

__all__ = [
    "Record",
    "read_records",
    "read_sharded_records",
    "check_output",
    "sidecar_path",
    "RunOutput",
    "OutputFile",
    "ShardedOutput",
    "MANIFEST",
    "upgrade_provenance",
]

MANIFEST = "manifest.json"
"""The file that makes a folder a sharded run."""
INDEX_DIR = "index"
"""The pool's index a predicting driver builds in its output folder before the first shard."""


def upgrade_provenance(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """A file's recorded provenance as the toolkit would write it now: a model recorded by its folder's path
    (before content ids) as that folder's content id; a templates hash of the shipped templates before they read
    the task's words as the same templates' hash now; a file without a task as the default task's."""
    from icl_toolkit.data.task import recorded_task
    from icl_toolkit.prompting.templates import current_templates_hash

    out = {k: recorded_model_id(v) if k in ("model_id", "teacher_model") else v for k, v in recorded.items()}
    if isinstance(out.get("templates_hash"), str):
        out["templates_hash"] = current_templates_hash(out["templates_hash"])
    out["task"] = recorded_task(out)
    return out


@runtime_checkable
class Record(Protocol):
    """A record object a run writes (a :class:`~icl_toolkit.inference.predictor.Prediction`, a teacher record):
    anything with ``to_dict()`` giving a JSON object with a ``patient_id``."""

    def to_dict(self) -> dict[str, Any]: ...


Inputs = Mapping[str, "str | os.PathLike[str] | None"]


def _scan(path: Path, kind: str) -> tuple[list[dict[str, Any]], int]:
    """The records of ``path`` and the byte length of its complete lines."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    end = data.rfind(b"\n") + 1
    records = []
    for lineno, line in enumerate(data[:end].split(b"\n")[:-1], 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested past Python's limit
            raise ConfigError(
                f"{path}:{lineno}: not a {kind} record ({type(exc).__name__}: {str(exc)[:80]}); the "
                "file is damaged. Start again with --overwrite, or remove that line."
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("patient_id"), str):
            raise ConfigError(
                f"{path}:{lineno}: not a {kind} record (expected a JSON object with a patient_id); "
                "start again with --overwrite, or write to another --out."
            )
        records.append(record)
    return records, end


def read_records(path: str | os.PathLike[str], kind: str = "predictions") -> list[dict[str, Any]]:
    """Every complete record of a run's output file (a torn last line from a killed run is not one); ``[]`` when
    the file does not exist.

    Args:
        path: the output file.
        kind: what the records are, for messages.

    Returns:
        The records, in file order.

    Raises:
        ConfigError: a complete line that is not a record, naming the file and line.
    """
    return _scan(Path(path), kind)[0]


def read_sharded_records(folder: str | os.PathLike[str], kind: str = "predictions") -> list[dict[str, Any]]:
    """Every record of the shards a folder's manifest lists, in shard order.

    Raises:
        ConfigError: no manifest, or a shard line that is not a record (naming the file and line).
    """
    folder = Path(folder)
    manifest = read_json(folder / MANIFEST, "shard manifest")
    out: list[dict[str, Any]] = []
    for shard in manifest.get("shards", []):
        path = folder / shard["file"]
        if not path.is_file():
            raise ConfigError(
                f"{path}: listed in {MANIFEST} but missing; the run's folder is damaged. Start again with --overwrite."
            )
        out += _scan(path, kind)[0]
    return out


def _as_dict(record: Record | Mapping[str, Any]) -> dict[str, Any]:
    return record.to_dict() if isinstance(record, Record) else dict(record)


def is_shard_file(name: str) -> bool:
    """A shard (``part-00000.jsonl``) or one being written (``.part-00000.jsonl.tmp``)."""
    return re.fullmatch(r"\.?part-\d+\.jsonl(\.tmp)?", name) is not None


def _holds_sharded_run(folder: Path, kind: str) -> bool:
    """Whether ``folder`` holds a sharded run (its manifest). A folder with other files is refused whatever the
    flags: ``--overwrite`` would empty it and ``--resume`` would mix shards into it. Shard files with no manifest
    yet (a run killed before it listed its first shard) hold no finished patient and are written over; ``index``
    is the pool's index a predicting driver builds there before its first shard."""
    if not folder.is_dir():
        return False
    if (folder / MANIFEST).exists():
        return True
    foreign = sorted(f.name for f in folder.iterdir() if not is_shard_file(f.name) and f.name != INDEX_DIR)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ConfigError(
            f"{folder} holds files that are not a sharded run of the {kind} ({shown}; no "
            "manifest.json). With --engine ray the output is a folder of its own: name a new or "
            "empty folder. Nothing was changed."
        )
    return False


def check_output(
    path: str | os.PathLike[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    kind: str = "predictions",
    inputs: Inputs | None = None,
    sharded: bool = False,
) -> bool:
    """The checks every output makes before it needs any settings, for a front end to make before it loads
    anything: the output is not an input, has the right shape (a file; a folder of shards), and does not hold a run
    already without resume or overwrite.

    Args:
        path: the output file (or folder, ``sharded``).
        resume: the caller will continue a run there.
        overwrite: the caller will replace a run there.
        kind: what the records are, for messages.
        inputs: the run's input files by flag name (``{"--cohort": path}``).
        sharded: the output is a folder of shards.

    Returns:
        Whether the output holds a run already.

    Raises:
        ConfigError: any rule broken, naming the flag and the fix.
    """
    path = Path(path)
    check_not_input(path, inputs or {}, what=f"the {kind} output")
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; pass one.")
    if sharded and path.exists() and not path.is_dir():
        raise ConfigError(
            f"{path} is a file; with --engine ray the {kind} output is a folder of shards with a "
            "manifest. Name a folder."
        )
    if not sharded and path.is_dir():
        raise ConfigError(f"{path} is a folder; the {kind} output is a file. Name a file (e.g. {path / 'out.jsonl'}).")
    held = _holds_sharded_run(path, kind) if sharded else path.exists()
    if held and not (resume or overwrite):
        raise ConfigError(
            f"{path} already {'holds a run' if sharded else 'exists'}. Pass --resume to continue it "
            "or --overwrite to replace it."
        )
    return held


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The settings sidecar of an output file: ``<path>.meta.json``."""
    path = Path(path)
    return path.with_name(path.name + ".meta.json")


class RunOutput:
    """The rules of the module docstring, shared by both shapes of output. A shape says where the recorded
    settings are (:meth:`_recorded`), how a killed run's leftovers go and which patients are done
    (:meth:`_reopen`), how a chunk is stored (:meth:`_store`, told whether it is the run's first), and how the old
    run is replaced (:meth:`_replace_old`).

    Args:
        path: the output file or folder.
        provenance: what the records depend on (settings, model, input hashes); recorded beside them and checked
            on resume.
        resume: continue an existing output made with the same provenance.
        overwrite: replace an existing output (once the new run has written its first chunk).
        kind: what the records are, for messages (``predictions``, ``teacher generations``).
        inputs: the run's input files by flag name (``{"--cohort": path}``); the output must not be one of them.

    Raises:
        ConfigError: a rule broken (an existing output without resume or overwrite, an input as output, a resume
            with other settings, naming the field).
    """

    sharded: ClassVar[bool] = False

    def __init__(
        self,
        path: str | os.PathLike[str],
        provenance: Mapping[str, Any],
        *,
        resume: bool = False,
        overwrite: bool = False,
        kind: str = "predictions",
        inputs: Inputs | None = None,
    ) -> None:
        self.path = Path(path)
        self.kind = kind
        self.provenance = dict(provenance)
        self.done: set[str] = set()
        self._reset()
        held = check_output(
            self.path, resume=resume, overwrite=overwrite, kind=kind, inputs=inputs, sharded=self.sharded
        )
        self._fresh = not (resume and held)  # a new run (or a replacement): nothing of it is written yet
        if not self._fresh:
            where, recorded = self._recorded()
            recorded = upgrade_provenance(recorded)
            check_meta(
                recorded,
                self.provenance,
                what=f"{kind} output",
                where=where,
                fix="Resume with the same settings, or write to another --out.",
            )
            self.done = self._reopen()

    # --- what a shape provides
    def _reset(self) -> None:
        """Set the shape's own state before anything is read (called first by the constructor)."""

    def _recorded(self) -> tuple[str, Mapping[str, Any]]:
        """Where the recorded provenance is, and what it says (an existing run being resumed)."""
        raise NotImplementedError

    def _reopen(self) -> set[str]:
        """Drop what a killed run left half-written; the ids of the patients finished."""
        raise NotImplementedError

    def _store(self, records: list[dict[str, Any]], first: bool) -> None:
        """Store one chunk durably (``first``: the first chunk of a new run, which replaces any old run)."""
        raise NotImplementedError

    def _replace_old(self) -> None:
        """A new run that wrote nothing still becomes the output (and replaces an old run)."""
        raise NotImplementedError

    # --- the rules
    def write(self, records: Sequence[Record | Mapping[str, Any]]) -> None:
        """Append a chunk of records (objects with ``to_dict()``, or dicts) durably.

        Raises:
            ConfigError: a patient already written (the cohort repeats an id, or the inputs changed mid-run).
            FileAccessError: the disk refused (one line naming the file and the fix).
        """
        if not records:
            return
        rows = [_as_dict(r) for r in records]
        ids = [r["patient_id"] for r in rows]
        again = [i for i in ids if i in self.done] or [i for i in set(ids) if ids.count(i) > 1]
        if again:
            raise ConfigError(
                f"{self.path}: patient {again[0]!r} would be written twice; the cohort repeats an "
                "id or the run's inputs changed while it ran."
            )
        try:
            self._store(rows, self._fresh)
        except OSError as exc:
            raise os_error(exc, self.path, f"writing the {self.kind}") from None
        self._fresh = False
        self.done.update(ids)

    def finish(self) -> None:
        """End the run: a new or overwritten output with nothing (left) to write still becomes the output."""
        if self._fresh:
            try:
                self._replace_old()
            except OSError as exc:
                raise os_error(exc, self.path, f"writing the {self.kind}") from None
            self._fresh = False

    def abort(self) -> None:
        """Drop what a new run wrote before its first chunk was committed (the old output stays as it was)."""

    def records(self) -> list[dict[str, Any]]:
        """Every record in the output."""
        raise NotImplementedError


class OutputFile(RunOutput):
    """A run's JSONL file and its settings sidecar ``<path>.meta.json`` (the rules of the module docstring). A new
    or replacing run writes to a hidden temporary file beside the target, moved over it with its first chunk."""

    @property
    def meta_path(self) -> Path:
        """The settings sidecar, ``<path>.meta.json``."""
        return sidecar_path(self.path)

    @property
    def _tmp(self) -> Path:
        """Where a new or replacing run writes until its first chunk."""
        return self.path.with_name(f".{self.path.name}.new")

    def _recorded(self) -> tuple[str, Mapping[str, Any]]:
        if not self.meta_path.exists():
            raise ConfigError(
                f"{self.path}: cannot resume: its settings sidecar {self.meta_path.name} is missing, so nothing "
                f"says which settings, model and inputs made the {len(read_records(self.path, self.kind))} records "
                "in it, and continuing could mix two runs in one file. Start again with --overwrite, or write to "
                "another --out."
            )
        meta = read_json(self.meta_path, f"{self.kind} metadata")
        if not isinstance(meta, dict):
            raise ConfigError(f"{self.meta_path}: not a {self.kind} metadata record. Start again with --overwrite.")
        return str(self.path), meta

    def _reopen(self) -> set[str]:
        records, end = _scan(self.path, self.kind)
        if end < self.path.stat().st_size:  # a torn last line from an interrupted write
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
        return {r["patient_id"] for r in records}

    @property
    def committed(self) -> bool:
        """Whether the target holds this run's records (always, when resuming)."""
        return not self._fresh

    def _commit(self) -> None:
        """Move the temporary file over the target (keeping the old file's mode) and write the sidecar."""
        if not self._tmp.exists():
            self._tmp.touch()
        keep_mode(self.path, self._tmp)
        self.meta_path.unlink(missing_ok=True)  # no window where new records sit beside the old settings
        os.replace(self._tmp, self.path)
        write_json_atomic(self.meta_path, base_meta(self.kind) | self.provenance)

    def _store(self, records: list[dict[str, Any]], first: bool) -> None:
        block = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        target = self._tmp if first else self.path
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(block)
            fh.flush()
            os.fsync(fh.fileno())
        if first:
            self._commit()

    def _replace_old(self) -> None:
        self._commit()

    def abort(self) -> None:
        if self._fresh:
            self._tmp.unlink(missing_ok=True)

    def records(self) -> list[dict[str, Any]]:
        return read_records(self.path, self.kind)


class ShardedOutput(RunOutput):
    """Shards of records under a folder, listed by its ``manifest.json`` with the run's provenance (the rules of
    the module docstring). Replacing a run removes its manifest and shards, and nothing else in the folder (the
    pool's index the driver built for this run, a file someone put there)."""

    sharded = True

    def _reset(self) -> None:
        self.shards: list[dict[str, Any]] = []

    @property
    def folder(self) -> Path:
        """The output folder (the same as :attr:`path`)."""
        return self.path

    def _recorded(self) -> tuple[str, Mapping[str, Any]]:
        manifest = read_json(self.path / MANIFEST, "shard manifest")
        self.shards = list(manifest.get("shards", []))
        return str(self.path / MANIFEST), manifest.get("provenance", {})

    def _reopen(self) -> set[str]:
        listed = {s["file"] for s in self.shards}
        for f in self.path.glob("part-*.jsonl*"):
            if f.name not in listed:  # written before a kill, never listed: not part of the run
                f.unlink()
        return {r["patient_id"] for r in self.records()}

    def _manifest(self) -> dict[str, Any]:
        return base_meta(f"sharded {self.kind}") | {
            "provenance": self.provenance,
            "shards": self.shards,
            "records": sum(s["records"] for s in self.shards),
        }

    def _remove_old_run(self) -> None:
        (self.path / MANIFEST).unlink(missing_ok=True)
        if self.path.is_dir():
            for f in self.path.iterdir():
                if is_shard_file(f.name):
                    f.unlink()

    def _store(self, records: list[dict[str, Any]], first: bool) -> None:
        if first:  # the new run's first shard: the old run goes now
            self._remove_old_run()
        self.path.mkdir(parents=True, exist_ok=True)
        name = f"part-{len(self.shards):05d}.jsonl"
        tmp = self.path / f".{name}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps(r, separators=(",", ":")) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path / name)
        self.shards.append({"file": name, "records": len(records)})
        write_json_atomic(self.path / MANIFEST, self._manifest())

    def _replace_old(self) -> None:
        self._remove_old_run()
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path / MANIFEST, self._manifest())

    def records(self) -> list[dict[str, Any]]:
        return read_sharded_records(self.path, self.kind)
