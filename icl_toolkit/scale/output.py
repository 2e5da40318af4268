"""A run's output as a folder of JSONL shards with a manifest, for runs spread over many workers.

``manifest.json`` is the truth: it lists the finished shards (name, records) and the run's provenance. A shard
is written to a temporary file, renamed into place, and only then added to the manifest (itself replaced
atomically), so a driver killed at any moment leaves every patient either in a listed shard or in none.
Files the manifest does not list (a shard written just before a kill) are removed when the run resumes.

The rules of :class:`icl_toolkit.run.OutputFile` hold here too, through the same checks
(:func:`icl_toolkit.run.check_output`): resuming checks the provenance (settings, model, inputs) and skips
finished patients; overwriting keeps the old shards until the new run's first shard is written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from icl_toolkit.artifacts import base_meta, check_meta, read_json, write_json_atomic
from icl_toolkit.errors import ConfigError
from icl_toolkit.files import os_error
from icl_toolkit.run import SHARD_MANIFEST, check_output, is_shard_file

__all__ = ["MANIFEST", "ShardedOutput", "read_sharded_records"]

MANIFEST = SHARD_MANIFEST


def read_sharded_records(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record of the shards a manifest lists, in shard order."""
    folder = Path(folder)
    manifest = read_json(folder / MANIFEST, "shard manifest")
    out: list[dict[str, Any]] = []
    for shard in manifest.get("shards", []):
        path = folder / shard["file"]
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    raise ConfigError(f"{path}:{lineno}: not a JSON record; the shard is damaged. Start again "
                                      "with --overwrite.") from None
    return out


class ShardedOutput:
    """Shards of records under ``folder`` (see the module docstring).

    Args:
        folder: the output folder.
        provenance: what the records depend on; kept in the manifest and checked on resume.
        resume / overwrite: as for :class:`icl_toolkit.run.OutputFile`.
        kind: what the records are, for messages.
        inputs: the run's input files by flag name; the output must not be one of them.
    """

    def __init__(self, folder: str | os.PathLike[str], provenance: Mapping[str, Any], *, resume: bool = False,
                 overwrite: bool = False, kind: str = "predictions",
                 inputs: Mapping[str, str | os.PathLike[str] | None] | None = None) -> None:
        self.folder = Path(folder)
        self.kind = kind
        self.provenance = dict(provenance)
        has_run = check_output(self.folder, resume=resume, overwrite=overwrite, kind=kind, inputs=inputs,
                               sharded=True)
        manifest_path = self.folder / MANIFEST
        self.shards: list[dict[str, Any]] = []
        self.done: set[str] = set()
        self._replace = bool(overwrite and has_run)
        if resume and manifest_path.exists():
            manifest = read_json(manifest_path, "shard manifest")
            check_meta(manifest.get("provenance", {}), self.provenance, what=f"the {kind} in {self.folder}",
                       where=str(manifest_path), fix="Resume with the settings it was made with, or start again "
                       "with --overwrite.")
            self.shards = list(manifest.get("shards", []))
            listed = {s["file"] for s in self.shards}
            for f in self.folder.glob("part-*.jsonl*"):
                if f.name not in listed:          # written before a kill, never listed: not part of the run
                    f.unlink()
            for r in read_sharded_records(self.folder):
                self.done.add(r["patient_id"])

    def _manifest(self) -> dict[str, Any]:
        return base_meta(f"sharded {self.kind}") | {"provenance": self.provenance, "shards": self.shards,
                                                    "records": sum(s["records"] for s in self.shards)}

    def _remove_old_run(self) -> None:
        """The replaced run's manifest and shards; nothing else in the folder (the pool's index the driver has
        just checked or rebuilt for this run, a file someone put there)."""
        (self.folder / MANIFEST).unlink(missing_ok=True)
        for f in self.folder.iterdir():
            if is_shard_file(f.name):
                f.unlink()
        self._replace = False

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        """One more shard of records (skipped when empty); a patient already written is an error, never a
        duplicate."""
        if not records:
            return
        ids = [r["patient_id"] for r in records]
        again = [i for i in ids if i in self.done] or [i for i in set(ids) if ids.count(i) > 1]
        if again:
            raise ConfigError(f"{self.folder}: patient {again[0]!r} would be written twice; the cohort repeats an "
                              "id or the run's inputs changed while it ran.")
        try:
            if self._replace:                        # the new run's first shard: the old run goes now
                self._remove_old_run()
            self.folder.mkdir(parents=True, exist_ok=True)
            name = f"part-{len(self.shards):05d}.jsonl"
            tmp = self.folder / f".{name}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                for r in records:
                    fh.write(json.dumps(r, separators=(",", ":")) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.folder / name)
            self.shards.append({"file": name, "records": len(records)})
            write_json_atomic(self.folder / MANIFEST, self._manifest())
        except OSError as exc:
            raise os_error(exc, self.folder, f"writing the {self.kind}") from None
        self.done.update(ids)

    def finish(self) -> None:
        """A run with nothing (left) to write still leaves a manifest (and replaces an overwritten run)."""
        if self._replace:
            self._remove_old_run()
        if not (self.folder / MANIFEST).exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.folder / MANIFEST, self._manifest())

    def records(self) -> list[dict[str, Any]]:
        return read_sharded_records(self.folder)
