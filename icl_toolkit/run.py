"""One resumable run loop, and one reader of what it writes, under every front end.

``icl predict``, ``icl rationales generate`` and every arm of ``icl compare``
write records (one JSON object per line, keyed by ``patient_id``) as chunks
finish, with a settings sidecar ``<out>.meta.json``; :func:`run_resumable` is
that loop, and :class:`OutputFile` and :func:`read_records` hold the file rules,
once:

- **New output**: nothing is written until the first chunk of records is; an
  error before that leaves no file behind.
- **An existing output** is refused unless ``resume`` or ``overwrite``.
- **Resume**: the sidecar must exist and match the settings, model and inputs
  given now (else refused, naming the field and the fix; without a sidecar
  nothing says what made the file, so it is refused too); a torn last line from
  a killed run is cut; finished patients are skipped.
- **Overwrite**: new records go to a hidden temporary file beside the target;
  the old file is replaced only once the new run has written its first chunk,
  so a run that fails early (a prompt that cannot fit, a model that does not
  load) leaves the old results as they were. The old file's mode is kept.
- **The output is not an input**: ``--out`` naming the cohort or the pool is
  refused before anything is read from it.
- **One reader**: complete lines only. A torn last line is not a record (it is
  cut when the file is resumed); a complete line that is not a JSON object with
  a ``patient_id`` is an error naming ``FILE:LINE``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from icl_toolkit.artifacts import base_meta, check_meta, read_json, write_json_atomic
from icl_toolkit.errors import ConfigError
from icl_toolkit.files import check_not_input, keep_mode, os_error
from icl_toolkit.progress import progress_bar

__all__ = ["read_records", "check_output", "sidecar_path", "OutputFile", "run_resumable", "predict_to_file", "predict_cohort_file",
           "RunResult"]

T = TypeVar("T")


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
            raise ConfigError(f"{path}:{lineno}: not a {kind} record ({type(exc).__name__}: {str(exc)[:80]}); the "
                              "file is damaged. Start again with --overwrite, or remove that line.") from None
        if not isinstance(record, dict) or not isinstance(record.get("patient_id"), str):
            raise ConfigError(f"{path}:{lineno}: not a {kind} record (expected a JSON object with a patient_id); "
                              "start again with --overwrite, or write to another --out.")
        records.append(record)
    return records, end


def read_records(path: str | os.PathLike[str], kind: str = "predictions") -> list[dict[str, Any]]:
    """Every complete record of a run's output (a torn last line from a killed run is not one); ``[]`` when
    the file does not exist.

    Raises:
        ConfigError: a complete line that is not a record, naming the file and line.
    """
    return _scan(Path(path), kind)[0]


def _as_dict(record: Any) -> dict[str, Any]:
    return record.to_dict() if hasattr(record, "to_dict") else dict(record)


def check_output(path: str | os.PathLike[str], *, resume: bool = False, overwrite: bool = False,
                 kind: str = "predictions", inputs: Mapping[str, str | os.PathLike[str] | None] | None = None,
                 sharded: bool = False) -> bool:
    """The checks :class:`OutputFile` (and, ``sharded``, :class:`icl_toolkit.scale.ShardedOutput`) make that need
    no settings, for a front end to make before it loads anything: the output is not an input, has the right
    shape (a file; a folder of shards), and does not hold a run already without resume or overwrite. Returns
    whether it holds one."""
    path = Path(path)
    check_not_input(path, inputs or {}, what=f"the {kind} output")
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; pass one.")
    if sharded and path.exists() and not path.is_dir():
        raise ConfigError(f"{path} is a file; with --engine ray the {kind} output is a folder of shards with a "
                          "manifest. Name a folder.")
    if not sharded and path.is_dir():
        raise ConfigError(f"{path} is a folder; the {kind} output is a file. Name a file (e.g. {path / 'out.jsonl'}).")
    held = _holds_sharded_run(path, kind) if sharded else path.exists()
    if held and not (resume or overwrite):
        raise ConfigError(f"{path} already {'holds a run' if sharded else 'exists'}. Pass --resume to continue it "
                          "or --overwrite to replace it.")
    return held


SHARD_MANIFEST = "manifest.json"     # the file that makes a folder a sharded run (icl_toolkit.scale.output)


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
    if (folder / SHARD_MANIFEST).exists():
        return True
    foreign = sorted(f.name for f in folder.iterdir() if not is_shard_file(f.name) and f.name != "index")
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ConfigError(f"{folder} holds files that are not a sharded run of the {kind} ({shown}; no "
                          "manifest.json). With --engine ray the output is a folder of its own: name a new or "
                          "empty folder. Nothing was changed.")
    return False


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The settings sidecar of an output file: ``<path>.meta.json``."""
    path = Path(path)
    return path.with_name(path.name + ".meta.json")


class OutputFile:
    """A run's JSONL output and its settings sidecar, with the rules of the module docstring.

    Args:
        path: the output file.
        provenance: what the records depend on (settings, model, input hashes); kept in ``<path>.meta.json``.
        resume: continue an existing file made with the same provenance.
        overwrite: replace an existing file (once the new run has written its first chunk).
        kind: what the records are, for messages (``predictions``, ``teacher generations``).
        inputs: the run's input files by flag name (``{"--cohort": path}``); the output must not be one of them.
    """

    def __init__(self, path: str | os.PathLike[str], provenance: Mapping[str, Any], *, resume: bool = False,
                 overwrite: bool = False, kind: str = "predictions",
                 inputs: Mapping[str, str | os.PathLike[str] | None] | None = None) -> None:
        self.path = Path(path)
        self.kind = kind
        self.meta_path = sidecar_path(self.path)
        self.provenance = dict(provenance)
        check_output(self.path, resume=resume, overwrite=overwrite, kind=kind, inputs=inputs)
        exists = self.path.exists()
        self.done: set[str] = set()
        self._tmp: Path | None = None
        if resume and exists:
            if not self.meta_path.exists():
                raise ConfigError(
                    f"{self.path}: cannot resume: its settings sidecar {self.meta_path.name} is missing, so nothing "
                    f"says which settings, model and inputs made the {len(read_records(self.path, kind))} records in "
                    "it, and continuing could mix two runs in one file. Start again with --overwrite, or write to "
                    "another --out.")
            meta = read_json(self.meta_path, f"{kind} metadata")
            if not isinstance(meta, dict):
                raise ConfigError(f"{self.meta_path}: not a {kind} metadata record. Start again with --overwrite.")
            check_meta(meta, self.provenance, what=f"{kind} file", where=str(self.path),
                       fix="Resume with the same settings, or write to another --out.")
            records, end = _scan(self.path, kind)
            if end < self.path.stat().st_size:  # a torn last line from an interrupted write
                with open(self.path, "r+b") as fh:
                    fh.truncate(end)
            self.done = {r["patient_id"] for r in records}
        else:  # new or overwritten: records go to a temporary file until the first chunk is written
            self._tmp = self.path.with_name(f".{self.path.name}.new")

    @property
    def committed(self) -> bool:
        """Whether the target holds this run's records (always, when resuming)."""
        return self._tmp is None

    def _commit(self) -> None:
        """Move the temporary file over the target (keeping the old file's mode) and write the sidecar."""
        assert self._tmp is not None
        if not self._tmp.exists():
            self._tmp.touch()
        keep_mode(self.path, self._tmp)
        self.meta_path.unlink(missing_ok=True)  # no window where new records sit beside the old settings
        os.replace(self._tmp, self.path)
        self._tmp = None
        write_json_atomic(self.meta_path, base_meta(self.kind) | self.provenance)

    def write(self, records: Sequence[Any]) -> None:
        """Append complete lines (records with ``to_dict()``, or dicts) and flush them to disk."""
        if not records:
            return
        block = "".join(json.dumps(_as_dict(r), separators=(",", ":")) + "\n" for r in records)
        target = self._tmp if self._tmp is not None else self.path
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "a", encoding="utf-8") as fh:
                fh.write(block)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise os_error(exc, self.path, f"writing the {self.kind}") from None
        if self._tmp is not None:
            self._commit()
        self.done.update(_as_dict(r)["patient_id"] for r in records)

    def finish(self) -> None:
        """End the run: a new or overwritten output with nothing left to write still becomes the target."""
        if self._tmp is not None:
            try:
                self._commit()
            except OSError as exc:
                raise os_error(exc, self.path, f"writing the {self.kind}") from None

    def abort(self) -> None:
        """Drop what a new or overwritten run wrote before its first commit (the old file stays as it was)."""
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)

    def records(self) -> list[dict[str, Any]]:
        """Every record in the output."""
        return read_records(self.path, self.kind)


@dataclass
class RunResult:
    """What :func:`run_resumable` did."""

    output: OutputFile
    done_before: int        # records already in the output (resumed)
    written: int            # records written now

    def records(self) -> list[dict[str, Any]]:
        return self.output.records()


def run_resumable(items: Sequence[T], produce: Callable[[list[T]], Sequence[Any]], output: OutputFile, *,
                  key: Callable[[T], str] = lambda item: item.patient_id,  # type: ignore[attr-defined]
                  chunk_size: int = 8, desc: str = "running", progress: bool = True,
                  prepare: Callable[[list[T]], None] | None = None,
                  on_resume: Callable[[int, int], None] | None = None,
                  advance: Callable[[int], None] | None = None) -> RunResult:
    """Produce records for the items not yet in ``output``, chunk by chunk, appending each chunk as it finishes.

    Args:
        items: what to process (patients); those whose key is already in the output are skipped.
        produce: a chunk of items -> their records (each with a ``patient_id``).
        output: where the records go (see :class:`OutputFile`).
        key: an item's id, as its record's ``patient_id``.
        chunk_size: items per ``produce`` call, and per write.
        desc: the progress bar's label.
        progress: show a progress bar.
        prepare: called once with the items still to do, before the loop (retrieval, with its own bar).
        on_resume: called with (records already done, items to go) when resuming.
        advance: report progress to a caller's bar instead of this function's own.

    Returns:
        What was done; an exception leaves the output as the rules say (the old file, or the chunks written).
    """
    if chunk_size < 1:
        raise ConfigError(f"The 'chunk_size' parameter must be an int >= 1. Got {chunk_size!r} instead.")
    todo = [it for it in items if key(it) not in output.done]
    before = len(output.done)
    if before and on_resume is not None:
        on_resume(before, len(todo))
    written = 0
    try:
        if prepare is not None and todo:
            prepare(todo)
        with progress_bar(desc, len(todo), progress and advance is None) as own:
            step = advance or own
            for start in range(0, len(todo), chunk_size):
                records = produce(todo[start:start + chunk_size])
                output.write(records)
                written += len(records)
                step(len(records))
        output.finish()
    except BaseException:
        output.abort()
        raise
    return RunResult(output, before, written)



def predict_to_file(predictor: Any, patients: Sequence[Any], output: OutputFile, *,
                    retrievals: Mapping[str, Any] | None = None, chunk_size: int = 8, progress: bool = True,
                    advance: Callable[[int], None] | None = None,
                    on_resume: Callable[[int, int], None] | None = None) -> RunResult:
    """:func:`run_resumable` for a fitted :class:`~icl_toolkit.predict.Predictor`: the patients still to do are
    retrieved for once (unless ``retrievals`` by patient id are given, as ``icl compare`` shares them), then
    scored chunk by chunk into ``output``."""
    from icl_toolkit.retrieve import Retrieval

    found: dict[str, Any] = dict(retrievals or {})

    def prepare(todo: list[Any]) -> None:
        if retrievals is None:
            found.update((r.query_id, r) for r in predictor.retrieve(todo))

    def produce(chunk: list[Any]) -> Sequence[Any]:
        return predictor.predict_proba(chunk, [found.get(p.patient_id) or Retrieval(p.patient_id) for p in chunk])

    return run_resumable(patients, produce, output, chunk_size=chunk_size, desc="predicting", progress=progress,
                         prepare=prepare, advance=advance, on_resume=on_resume)


def predict_cohort_file(cohort: str | os.PathLike[str], out: str | os.PathLike[str], config: Any, *,
                        model: str = "default", engine: Any = None, pool: str | os.PathLike[str] | None = None,
                        index: str | os.PathLike[str] | None = None,
                        retrieval: str | os.PathLike[str] | None = None, resume: bool = False, overwrite: bool = False,
                        limit: int | None = None, chunk_size: int = 8,
                        on_resume: Callable[[int, int], None] | None = None,
                        meds_out: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """``icl predict`` as a function: the patients of a cohort file predicted into ``out`` with ``config`` (a
    :class:`~icl_toolkit.spec.PredictConfig`) by ``model`` on ``engine``; returns the records of those patients.

    Everything that can be checked without loading is checked first (the pool a demo setting needs, the output
    rules), so a mistake costs no model load and touches no file. ``meds_out``: also write the labelled records'
    predictions there in the meds-evaluation schema (:mod:`icl_toolkit.meds.predictions`).
    """
    from icl_toolkit.backends.options import open_backend
    from icl_toolkit.cohort import read_cohort
    from icl_toolkit.predict import Predictor

    if pool is None and config.uses_demos:
        raise ConfigError("--pool is required for demonstrations (or use --demos none / --k 0 for zero-shot).")
    if index is not None and pool is None:
        raise ConfigError("--index needs the --pool it was built from (the demos' records come from the pool).")
    inputs = {"--cohort": cohort, "--pool": pool, "--retrieval": retrieval}
    check_output(out, resume=resume, overwrite=overwrite, inputs=inputs)
    patients = read_cohort(cohort)
    if limit:
        patients = patients[:limit]
    demo_pool = read_cohort(pool) if pool is not None else []
    lm = open_backend(model, engine)
    predictor = Predictor(lm, config, retrieval_cache=retrieval).fit(demo_pool, index, pool_name=str(pool))
    output = OutputFile(out, predictor.provenance(patients), resume=resume, overwrite=overwrite, inputs=inputs)
    lm.progress = False
    if meds_out is not None:
        from icl_toolkit.meds.predictions import meds_key

        for p in patients:
            meds_key(p)          # a record without a MEDS subject is refused before any scoring
    predict_to_file(predictor, patients, output, chunk_size=chunk_size, on_resume=on_resume)
    wanted = {p.patient_id for p in patients}
    records = [r for r in output.records() if r["patient_id"] in wanted]
    if meds_out is not None:
        from icl_toolkit.meds.predictions import write_meds_predictions

        write_meds_predictions(records, patients, meds_out)
    return records
