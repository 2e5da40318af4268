"""Running a comparison: shared retrieval, every arm's predictions (resumable), baselines, statistics, outputs.

Layout of the output folder::

    results/
      index/                      the pool's demo index (built once)
      retrieval/<strategy>-k<k>.json   cached retrievals, shared by every arm with that strategy and k
      arms/<arm>.jsonl            test predictions of each arm (+ .val.jsonl for validation, + .meta.json)
      baselines/<name>.jsonl      baseline probabilities on the same patients
      results.csv / results.md    metrics with 95% CIs, ΔAUROC and DeLong p against the reference arm
      subgroups.csv               per entry and group (sex, age band, group attributes): metrics with CIs
      fairness_gaps.csv           per entry and grouping: AUROC gap, parity and odds differences, excess gaps
      fairness.png                AUROC by group per entry, with CIs
      fairness_cache.json         the subgroup bootstrap per entry and grouping, keyed by a digest of its inputs
                                  (a regenerated report recomputes only entries whose predictions changed; a
                                  full run drops entries no longer used, an --only run keeps them)
      roc.png, auroc_vs_k.png, calibration.png
      report.md                   settings, table, plots, a model card per arm

Every arm sees the same test patients in the same order, and arms with the same
strategy and k read the same cached retrieval, so two arms differ only in the
checkpoint, the demo content or the scoring mode they name. Predictions are
appended as they finish; a rerun skips finished arms without loading their
model and resumes a half-finished one where it stopped.
"""

from __future__ import annotations

import fnmatch
import gc
import importlib.metadata as md
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from icl_toolkit.backends import Backend
from icl_toolkit.core.artifacts import meta_differences, read_json, write_csv_rows, write_json_atomic
from icl_toolkit.core.errors import ConfigError
from icl_toolkit.core.models import checkpoint_meta, model_available, recorded_model_id
from icl_toolkit.core.progress import progress_bar
from icl_toolkit.data.cohort import Patient, content_hash
from icl_toolkit.data.task import ADRD, cohorts_task
from icl_toolkit.evaluation import baselines as bl
from icl_toolkit.evaluation import tabular as tab
from icl_toolkit.evaluation.compare.config import OPTION_DEFAULTS, Arm, CompareConfig, load_compare_config
from icl_toolkit.evaluation.compare.report import (
    plot_auroc_vs_k,
    plot_calibration,
    plot_fairness,
    plot_roc,
    write_report,
    write_tables,
)
from icl_toolkit.evaluation.compare.stats import TABULAR, Entry, contrast_rows, evaluate, standard_contrasts
from icl_toolkit.evaluation.fairness import ORACLE, load_cache, save_cache
from icl_toolkit.inference.gain import GainConfig, compute_gain
from icl_toolkit.inference.output import OutputFile, read_records, sidecar_path, upgrade_provenance
from icl_toolkit.inference.predictor import Predictor
from icl_toolkit.inference.run import predict_to_file
from icl_toolkit.prompting.builder import task_question, templates_hash
from icl_toolkit.retrieval.cache import RetrievalCache
from icl_toolkit.retrieval.embedder import ProfileEmbedder
from icl_toolkit.retrieval.gain import GAIN_FILE, GainScores
from icl_toolkit.retrieval.index import DemoIndex
from icl_toolkit.retrieval.representations import make_representation, needs_embedder
from icl_toolkit.retrieval.retriever import Retrieval, Retriever

__all__ = ["Comparison", "CompareResult"]

FAIRNESS_CACHE = "fairness_cache.json"

BackendFactory = Callable[[str, str], Backend]
"""(checkpoint name, model path or name) -> a loaded backend."""


@dataclass
class CompareResult:
    """What a comparison produced."""

    out: Path
    rows: list[dict[str, Any]]
    subgroups: list[dict[str, Any]]
    report: Path
    ran: list[str]  # arms predicted (fully or partly) in this call
    skipped: list[str]  # arms already complete
    contrasts: list[dict[str, Any]] = field(default_factory=list)  # the config's paired tests among the arms run
    fairness_gaps: list[dict[str, Any]] = field(default_factory=list)  # per entry and grouping: gaps, excess gaps


def draw_validation(val: list[Patient], limit: int | None, how: str = "stratified") -> list[Patient]:
    """The validation patients a comparison uses: all of them, or ``limit`` of them drawn as ``how`` says
    (see :attr:`CompareConfig.val_draw`), in file order."""
    if not limit or limit >= len(val):
        return val
    if how == "first":
        return val[:limit]
    cases = [i for i, p in enumerate(val) if p.label == 1]
    others = [i for i, p in enumerate(val) if p.label != 1]
    want = round(limit * len(cases) / len(val))
    if cases and others:
        want = min(max(want, 1), limit - 1, len(cases))
    keep = set(cases[:want]) | set(others[: limit - want])
    return [p for i, p in enumerate(val) if i in keep]


def select_arms(arms: list[Arm], only: Sequence[str], reference: str) -> list[Arm]:
    """The arms whose checkpoint is named in ``only`` or whose name matches one of its globs.

    Raises:
        ConfigError: a pattern matches nothing, or the reference arm is left out.
    """

    def hit(arm: Arm, pattern: str) -> bool:
        return arm.checkpoint == pattern or fnmatch.fnmatchcase(arm.name, pattern)

    for pattern in only:
        if not any(hit(a, pattern) for a in arms):
            raise ConfigError(
                f"--only {pattern!r} matches no arm or checkpoint; the arms are: " + "; ".join(a.name for a in arms)
            )
    chosen = [a for a in arms if any(hit(a, p) for p in only)]
    if reference not in {a.name for a in chosen}:
        raise ConfigError(
            f"--only leaves out the reference arm {reference!r}, which every DeLong test is against; "
            "add it (e.g. --only base)."
        )
    return chosen


class Comparison:
    """Runs the arms of a :class:`CompareConfig` and the baselines on the same patients.

    Args:
        config: the comparison.
        out: output folder (created; reused and resumed when it exists).
        embedder: profile embedder for the dense and hybrid retrievers (default: the embedded MiniLM, when needed).
        backend_factory: builds a backend per checkpoint (default: the configured backend).
        progress: show progress bars.
    """

    def __init__(
        self,
        config: CompareConfig,
        out: str | Path,
        *,
        embedder: ProfileEmbedder | None = None,
        backend_factory: BackendFactory | None = None,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.out = Path(out)
        self.embedder = embedder
        self.backend_factory = backend_factory or self._default_backend
        self.progress = progress
        self._val_all: list[Patient] = []
        self.tabular: dict[str, dict[str, Any]] = {}
        """Per tuned baseline: the parameters chosen, how, the fit time and its feature matrix's size."""
        self.probes: dict[str, dict[str, Any]] = {}
        """Per probe arm run in this call: the layer, pooling and C chosen, how, and the cost."""

    # ------------------------------------------------------------------ pieces

    def _default_backend(self, name: str, model: str) -> Backend:
        from icl_toolkit.backends.options import open_backend

        return open_backend(model, self.config.engine, progress=False)

    def _index(self, pool: Sequence[Patient]) -> DemoIndex:
        """The pool's index for the comparison's retriever (built once into ``index/``, checked when reused)."""
        folder = self.out / "index"
        rep = make_representation(self.config.retrieval_config("similar", 1), self.embedder, pool)
        if (folder / DemoIndex.META_FILE).exists():
            index = DemoIndex.load(folder)
            index.check(pool, rep, str(folder))
            return index
        index = DemoIndex.build(
            pool, rep, kind=self.config.index_kind, progress=self.progress, task=self.config.task.name
        )
        index.save(folder)
        return index

    def _retrievals(
        self, keys: set[tuple[str, int]], pool: Sequence[Patient], index: DemoIndex, queries: Sequence[Patient]
    ) -> dict[tuple[str, int], dict[str, Retrieval]]:
        out = {}
        for strategy, k in sorted(keys):
            retriever = Retriever(self.config.retrieval_config(strategy, k), self.embedder).fit(pool, index)
            path = self.out / "retrieval" / f"{strategy}-k{k}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            cache = RetrievalCache.open(path, retriever.cache_key(self.config.task.name))
            known = len(cache.entries)
            found = cache.retrieve(retriever, queries, progress=self.progress)
            if len(cache.entries) != known or not path.exists():
                cache.save(path)
            out[(strategy, k)] = {r.query_id: r for r in found}
        return out

    def _arm_paths(self, arm: Arm) -> tuple[Path, Path]:
        folder = self.out / "arms"
        return folder / f"{arm.slug}.jsonl", folder / f"{arm.slug}.val.jsonl"

    def _pending(self, arm: Arm, test: Sequence[Patient], val: Sequence[Patient]) -> int:
        path, vpath = self._arm_paths(arm)
        done = {r["patient_id"] for r in read_records(path)}
        vdone = {r["patient_id"] for r in read_records(vpath)}
        return sum(p.patient_id not in done for p in test) + sum(p.patient_id not in vdone for p in val)

    def _check_finished(
        self, arm: Arm, test: Sequence[Patient], val: Sequence[Patient], hashes: dict[str, str]
    ) -> None:
        """A finished arm is reused only if its settings sidecars match what the arm would be run with now:
        every setting of its spec (retrieval settings only where it shows demos), the prompt templates, the test
        or validation patients and the pool, checked without loading its model (the model is checked when an
        unfinished arm resumes). A setting the file predates (added to the toolkit after it was made) is not
        checked, nor, while its checkpoint is not on this machine, the prompt template the checkpoint was
        trained on (read from the checkpoint)."""
        spec = self.config.spec(arm)
        config = spec.model_dump(mode="json")
        if arm.demos == "none":
            del config["retrieval"]
        now: dict[str, Any] = {
            "config": config,
            "templates_hash": templates_hash(spec.prompt),
            "task": spec.prompt.task.name,
            "pool_hash": hashes["pool"],
        }
        if not model_available(self.config.checkpoints[arm.checkpoint]):
            del now["config"]["prompt"]["template"], now["templates_hash"]
        for cohort, key, path in zip((test, val), ("test", "val"), self._arm_paths(arm)):
            if not cohort:
                continue
            meta_path = sidecar_path(path)
            fix = (
                f"Restore the settings and inputs it was made with, or delete {path.name} and its "
                f"{meta_path.name} to rerun the arm with these."
            )
            if not meta_path.exists():
                raise ConfigError(
                    f"{path}: its settings sidecar {meta_path.name} is missing, so nothing says "
                    f"which settings made these predictions. {fix}"
                )
            meta = read_json(meta_path, "predictions metadata")
            if not isinstance(meta, dict):
                raise ConfigError(f"{meta_path}: not a predictions metadata record. {fix}")
            diffs = meta_differences(
                upgrade_provenance(meta), now | {"cohort_hash": hashes[key]}, verb="made", ignore_missing=True
            )
            if diffs:
                raise ConfigError(
                    f"{path}: arm {arm.name!r} was made with other settings or inputs than it "
                    f"would be run with now ({'; '.join(diffs)}). {fix}"
                )

    def _run_arm(
        self,
        arm: Arm,
        backend: Backend,
        pool: Sequence[Patient],
        index: DemoIndex | None,
        test: Sequence[Patient],
        val: Sequence[Patient],
        retrievals: dict[tuple[str, int], dict[str, Retrieval]],
        advance: Callable[..., None],
    ) -> None:
        if arm.kind == "probe":
            self._run_probe(arm, backend, pool, test, val, advance)
            return
        spec = self.config.spec(arm)
        if arm.strategy == "gain" and arm.demos != "none":  # its own retrieval: the gain scores are the model's
            predictor = Predictor(
                backend,
                spec,
                embedder=self.embedder,
                retrieval_cache=self.out / "retrieval" / f"gain-{arm.checkpoint}-k{arm.k}.json",
                progress=False,
            ).fit(pool, index, gain=self._gain(arm, backend, pool))
            found: dict[str, Retrieval] | None = None
        else:
            predictor = Predictor(backend, spec, embedder=self.embedder, progress=False).fit(pool, index)
            found = retrievals.get(arm.retrieval_key, {}) if arm.retrieval_key else {}
        for cohort, path in zip((test, val), self._arm_paths(arm)):
            if cohort:
                output = OutputFile(path, predictor.provenance(cohort) | {"arm": _arm_record(arm)}, resume=True)
                predict_to_file(predictor, cohort, output, retrievals=found, progress=False, advance=advance)

    def _gain(self, arm: Arm, backend: Backend, pool: Sequence[Patient]) -> GainScores:
        """The pool's gain scores for this arm's checkpoint (computed once into ``gain/<checkpoint>/``, reused
        while the model, pool and settings match)."""
        folder = self.out / "gain" / arm.checkpoint
        if (folder / GAIN_FILE).exists():
            scores = GainScores.load(folder / GAIN_FILE)
            made = GainConfig(**scores.meta.get("settings", {}))  # a setting the file predates: its default
            if (
                made == self.config.gain
                and scores.meta.get("pool_hash") == content_hash(pool)
                and scores.model_id == backend.model_id
            ):
                return scores
        scores = compute_gain(backend, pool, self.config.spec(arm).prompt, self.config.gain, progress=self.progress)
        folder.mkdir(parents=True, exist_ok=True)
        scores.save(folder)
        return scores

    # ------------------------------------------------------------------ run

    def _run_probe(
        self,
        arm: Arm,
        backend: Backend,
        pool: Sequence[Patient],
        test: Sequence[Patient],
        val: Sequence[Patient],
        advance: Callable[..., None],
    ) -> None:
        """A probe arm: the frozen model's pooled hidden states of each zero-shot prompt (cached under
        ``probes/<arm>/``), a logistic regression fit on the pool, layer, pooling and C chosen on the validation
        patients (:mod:`icl_toolkit.evaluation.probe`)."""
        import time

        from icl_toolkit.evaluation import probe as pr

        states_of = getattr(backend, "prompt_states", None)
        if states_of is None:
            raise ConfigError(
                f"arm {arm.name!r}: a probe reads the model's hidden states, which only the transformers backend "
                'gives; set [engine] backend = "hf" (the vLLM and openai backends return text and log-probabilities).'
            )
        spec = self.config.spec(arm)
        predictor = Predictor(backend, spec, progress=False).fit(pool)
        layers = pr.probe_layers(backend.n_layers)  # type: ignore[attr-defined]
        folder = self.out / "probes" / arm.slug
        cache = pr.StateCache(
            folder,
            {
                "model_id": backend.model_id,
                "templates_hash": templates_hash(spec.prompt),
                "prompt": spec.prompt.model_dump(mode="json"),
                "layers": layers,
            },
        )
        timing = {"seconds": 0.0, "patients": 0}

        def states(name: str, cohort: Sequence[Patient], step: Callable[..., None] | None) -> Any:
            built = predictor.build_prompts(cohort, [Retrieval(p.patient_id) for p in cohort])

            def compute(positions: list[int]) -> Any:
                start = time.perf_counter()
                out = states_of([built[i].text for i in positions], layers)
                timing["seconds"] += time.perf_counter() - start
                timing["patients"] += len(positions)
                if step is not None:
                    step(len(positions))
                return out

            return cache.states(name, [p.patient_id for p in cohort], compute), built

        with progress_bar(f"{arm.name}: hidden states of the pool", len(pool), self.progress) as pool_step:
            pool_states, _ = states("pool", pool, pool_step)
        y_pool = np.array([p.label for p in pool])
        test_states, test_built = states("test", test, advance)
        val_states, val_built = states("val", val, advance) if val else (None, [])
        y_val = np.array([p.label for p in val]) if val else None
        choice, trials = pr.choose_probe(pool_states, y_pool, val_states, y_val, layers)
        if trials:
            write_csv_rows(folder / "selection.csv", trials)
        probs = pr.probe_probabilities(
            choice, layers, pool_states, y_pool, test_states, *([val_states] if val_states is not None else [])
        )
        per_patient = timing["seconds"] / timing["patients"] if timing["patients"] else 0.0
        for cohort, built, p_cohort, path in zip((test, val), (test_built, val_built), probs, self._arm_paths(arm)):
            output = OutputFile(
                path, predictor.provenance(cohort) | {"arm": _arm_record(arm), "probe": choice}, overwrite=True
            )
            output.write(
                [
                    {
                        "patient_id": p.patient_id,
                        "probability": float(q),
                        "predicted": int(q >= 0.5),
                        "label": p.label,
                        "demos": [],
                        "dropped_demos": [],
                        "truncated_items": b.truncated_items,
                        "prompt_tokens": b.n_tokens,
                        "prompt_hash": b.hash,
                        "model_id": backend.model_id,
                        "template": b.template,
                        "mode": "probe",
                        "reasoning": None,
                        "seconds": per_patient,
                        "logprobs": [],
                    }
                    for p, b, q in zip(cohort, built, p_cohort)
                ]
            )
            output.finish()
        self.probes[arm.name] = choice | {
            "layers": layers,
            "trials": len(trials),
            "pool_patients": len(pool),
            "seconds_per_patient": round(per_patient, 3),
        }

    def run(
        self,
        test: Sequence[Patient],
        pool: Sequence[Patient],
        val: Sequence[Patient] | None = None,
        *,
        names: dict[str, str] | None = None,
        only: Sequence[str] = (),
    ) -> CompareResult:
        """Predict every arm, compute the baselines and statistics, write the outputs.

        Args:
            test: test patients (the first ``limit`` are used).
            pool: demonstration pool and training data of the baselines.
            val: validation patients for the F1 thresholds (first ``val_limit``).
            names: file names of the cohorts, for the report.
            only: run and report only the arms whose checkpoint name is one of these, or whose arm name
                matches one as a glob (``"base*"``); the reference arm must be among them. For staged runs:
                arms of checkpoints that are ready first, the rest when their checkpoints are trained.
        """
        c = self.config
        names = names or {}
        test = list(test)[: c.limit] if c.limit else list(test)
        self._val_all = list(val) if val else []  # the tabular baselines tune on every validation patient
        val = draw_validation(list(val), c.val_limit, c.val_draw) if val else []
        pool = list(pool)
        overlap = {p.subject_id for p in pool} & {p.subject_id for p in [*test, *val]}
        if overlap:
            raise ConfigError(
                f"{len(overlap)} test or validation subjects are also in the pool (first: "
                f"{sorted(overlap)[0]}); they would see their own outcome. Use splits that are "
                "disjoint by subject (MEDS: a subject's records at every prediction time in one split)."
            )
        arms = select_arms(c.arms(), only, c.reference_arm) if only else c.arms()
        hashes = {"pool": content_hash(pool), "test": content_hash(test), "val": content_hash(val)}
        pending = {arm.name: self._pending(arm, test, val) for arm in arms}
        for arm in arms:  # a finished arm is checked before anything is built or run
            if pending[arm.name] == 0:
                self._check_finished(arm, test, val, hashes)
        self.out.mkdir(parents=True, exist_ok=True)
        keys = {a.retrieval_key for a in arms if a.retrieval_key}
        if "knn" in c.baselines and not keys:
            keys.add(("similar", 4))
        index = None
        retrievals: dict[tuple[str, int], dict[str, Retrieval]] = {}
        if keys:
            shared = self.config.retrieval_config("similar", 1)
            if self.embedder is None and needs_embedder(shared.retriever, shared.hybrid_weights):
                self.embedder = ProfileEmbedder()
            index = self._index(pool)
            retrievals = self._retrievals(keys, pool, index, [*test, *val])

        ran, skipped = [], []
        by_ckpt: dict[str, list[Arm]] = {}
        for arm in arms:
            by_ckpt.setdefault(arm.checkpoint, []).append(arm)
        for ckpt, group in by_ckpt.items():
            todo = [(a, pending[a.name]) for a in group]  # an arm's file changes only when it runs
            skipped += [a.name for a, n in todo if n == 0]
            todo = [(a, n) for a, n in todo if n > 0]
            if not todo:
                continue
            backend = self.backend_factory(ckpt, c.checkpoints[ckpt])
            for arm, n in todo:
                position = arms.index(arm) + 1
                with progress_bar(f"arm {position}/{len(arms)}: {arm.name}", n, self.progress) as advance:
                    self._run_arm(arm, backend, pool, index, test, val, retrievals, advance)
                ran.append(arm.name)
            del backend
            gc.collect()
        return self._finish(arms, test, val, pool, retrievals, names, ran, skipped)

    # ------------------------------------------------------------------ outputs

    def _read_arm(self, cohort: Sequence[Patient], path: Path) -> tuple[list[float], list[dict[str, Any]]]:
        records = {r["patient_id"]: r for r in read_records(path)}
        missing = [p.patient_id for p in cohort if p.patient_id not in records]
        if missing:
            raise ConfigError(
                f"{path}: no prediction for {len(missing)} patients (first {missing[0]}); rerun "
                "icl compare to finish the arm."
            )
        rows = [records[p.patient_id] for p in cohort]
        return [r["probability"] for r in rows], rows

    def _finish(
        self,
        arms: list[Arm],
        test: list[Patient],
        val: list[Patient],
        pool: list[Patient],
        retrievals: dict[tuple[str, int], dict[str, Retrieval]],
        names: dict[str, str],
        ran: list[str],
        skipped: list[str],
    ) -> CompareResult:
        c = self.config
        entries: list[Entry] = []
        infos: dict[str, dict[str, Any]] = {}
        votes: list[tuple[str, int, list[dict[str, Any]], list[dict[str, Any]] | None]] = []
        for arm in arms:
            path, vpath = self._arm_paths(arm)
            probs, records = self._read_arm(test, path)
            vprobs = self._read_arm(val, vpath)[0] if val else None
            info = {
                "checkpoint": arm.checkpoint,
                "demos": arm.demos,
                "k": arm.k,
                "strategy": arm.strategy,
                "mode": arm.mode,
            } | ({"arm_kind": "probe"} if arm.kind == "probe" else {})
            info |= {"show_risk": True} if arm.show_risk else {}
            entries.append(Entry(arm.name, "arm", probs, vprobs, info))
            meta = checkpoint_meta(c.checkpoints[arm.checkpoint])
            infos[arm.name] = {
                "model_id": recorded_model_id(records[0]["model_id"]),
                "template": records[0]["template"],
                "mean_prompt_tokens": float(np.mean([r["prompt_tokens"] for r in records])),
                "seconds_per_patient": float(np.mean([r["seconds"] for r in records])),
                "checkpoint_meta": meta,
            }
            if arm.strategy == "gain" and arm.demos != "none":  # the vote of the demos it showed, from its records
                vrecords = self._read_arm(val, vpath)[1] if val else None
                votes.append((bl.vote_name(arm.strategy, arm.k, arm.checkpoint), arm.k, records, vrecords))
            if arm.kind == "probe":
                infos[arm.name]["probe"] = read_json(sidecar_path(path), "predictions metadata").get("probe")
        entries += self._baselines(test, val, pool, retrievals, infos, votes, any(a.show_risk for a in arms))
        _add_costs(entries, infos, arms)
        y = np.array([p.label for p in test])
        cache_path = self.out / FAIRNESS_CACHE
        fairness_cache = load_cache(cache_path)
        rows, fairness = evaluate(
            entries,
            test,
            val or None,
            reference=c.reference_arm,
            n_resamples=c.bootstrap,
            seed=c.seed,
            fairness_resamples=c.fairness_bootstrap,
            progress=self.progress,
            fairness_cache=fairness_cache,
        )
        if len(arms) == len(c.arms()):  # a full run keeps what it used; an --only run keeps the rest too
            fairness_cache = {k: fairness_cache[k] for k in fairness.cache_keys}
        save_cache(cache_path, fairness_cache)
        subgroups = fairness.subgroups
        contrasts = contrast_rows(
            entries, test, [*c.contrasts, *c.option_contrasts(arms), *standard_contrasts(entries, test, val)]
        )
        write_tables(self.out, rows, fairness, contrasts)
        recalibration = self._recalibrate(entries, test, val)
        plots = ["roc.png", "calibration.png"]
        plot_roc(self.out / "roc.png", entries, y, rows)
        plot_calibration(self.out / "calibration.png", entries, y)
        plot_fairness(self.out / "fairness.png", fairness)
        plots.append("fairness.png")
        if plot_auroc_vs_k(self.out / "auroc_vs_k.png", rows):
            plots.insert(1, "auroc_vs_k.png")
        context = {
            "task": {"name": c.task.name, "question": task_question(c.spec(c.arms()[0]).prompt)},
            "reference": c.reference_arm,
            "version": md.version("icl-toolkit"),
            "test_file": names.get("test", "test"),
            "n_test": len(test),
            "cases": int(y.sum()),
            "test_hash": content_hash(test),
            "pool_file": names.get("pool", "pool"),
            "n_pool": len(pool),
            "pool_hash": content_hash(pool),
            "val_file": names.get("val") if val else None,
            "n_val": len(val),
            "bootstrap": c.bootstrap,
            "fairness_bootstrap": c.fairness_bootstrap,
            "seed": c.seed,
            "prompt": c.prompt.model_dump(exclude_unset=True),
            "retrieval": c.retrieval.model_dump(exclude_unset=True),
            "tabular": self.tabular,
        }
        report = write_report(
            self.out, rows, fairness, infos, context | {"card": c.card}, plots, contrasts, recalibration
        )
        write_json_atomic(
            self.out / "summary.json",
            {
                "context": context,
                "card": c.card.model_dump(mode="json"),
                "results": rows,
                "contrasts": contrasts,
                "fairness_gaps": fairness.gaps,
            },
        )
        return CompareResult(self.out, rows, subgroups, report, ran, skipped, contrasts, fairness.gaps)

    def _recalibrate(self, entries: list[Entry], test: list[Patient], val: list[Patient]) -> list[dict[str, Any]]:
        """Platt and isotonic recalibration of every entry on its validation predictions
        (``recalibration.csv``); nothing without validation patients of both classes."""
        from icl_toolkit.evaluation.calibration import recalibration_rows

        if not val:
            return []
        y, yv = np.array([p.label for p in test]), np.array([p.label for p in val])
        rows = [
            r
            for e in entries
            if e.val is not None
            for r in recalibration_rows(
                e.name, y, e.test, yv, e.val, n_resamples=self.config.bootstrap, seed=self.config.seed
            )
        ]
        if rows:
            write_csv_rows(self.out / "recalibration.csv", rows)
        return rows

    def _baselines(
        self,
        test: list[Patient],
        val: list[Patient],
        pool: list[Patient],
        retrievals: dict[tuple[str, int], dict[str, Retrieval]],
        infos: dict[str, dict[str, Any]],
        votes: Sequence[tuple[str, int, list[dict[str, Any]], list[dict[str, Any]] | None]] = (),
        risk_shown: bool = False,
    ) -> list[Entry]:
        folder = self.out / "baselines"
        folder.mkdir(parents=True, exist_ok=True)
        out: list[Entry] = []

        def add(name: str, description: str, probs: list[float], vprobs: list[float] | None) -> None:
            out.append(
                Entry(
                    name,
                    "baseline",
                    probs,
                    vprobs,
                    {"checkpoint": "-", "demos": "-", "k": 0, "strategy": "-", "mode": "-"}
                    | ({"family": "tabular"} if name in TABULAR else {}),
                )
            )
            infos[name] = {"description": description}
            with open(folder / f"{name.replace(' ', '_').replace('=', '').replace(',', '')}.jsonl", "w") as fh:
                for p, prob in zip(test, probs):
                    fh.write(json.dumps({"patient_id": p.patient_id, "probability": prob, "label": p.label}) + "\n")

        fitted: list[tab.TabularBaseline] = []
        for kind in self.config.baselines:
            if kind in tab.TABULAR_NAMES:
                b = tab.fit_tabular(kind, pool, self._val_all or val, self.config.tabular, seed=self.config.seed)
                fitted.append(b)
                self.tabular[b.name] = b.summary()
                add(b.name, b.description, b.predict(test), b.predict(val) if val else None)
            elif kind == "age":
                model = bl.fit_age_only(pool)
                add(
                    "age only",
                    f"logistic regression on age, fit on the {len(pool)} pool patients",
                    bl.predict_age(model, test),
                    bl.predict_age(model, val) if val else None,
                )
            elif kind == "knn":
                for name, k, records, vrecords in votes:
                    add(
                        name,
                        f"share of positive outcomes among the {k} demonstrations the arm showed (its records)",
                        bl.record_vote(records),
                        bl.record_vote(vrecords) if vrecords is not None else None,
                    )
                for (strategy, k), found in sorted(retrievals.items()):
                    add(
                        bl.vote_name(strategy, k),
                        f"share of positive outcomes among the same {k} neighbours "
                        f"({strategy} retrieval) the demonstration arms show",
                        bl.knn_vote([found[p.patient_id] for p in test]),
                        bl.knn_vote([found[p.patient_id] for p in val]) if val else None,
                    )
            elif kind == "oracle":
                risk = bl.oracle_risk(test)
                if risk is not None:
                    add(
                        ORACLE,
                        "the true risk the synthetic generator drew each outcome from "
                        "(an upper reference, not a model)",
                        risk,
                        bl.oracle_risk(val) if val else None,
                    )
        if risk_shown or "risk" in self.config.baselines:
            from icl_toolkit.retrieval.risk import PoolRisk

            model = PoolRisk(self.config.retrieval_config("similar", 1)).fit(pool)
            add(
                bl.RISK_SHOWN,
                "the pool model's risk (the prognostic retriever's logistic regression on the pool) that show_risk "
                "arms write into the prompt: the score alone",
                [float(x) for x in model.risk(test)],
                [float(x) for x in model.risk(val)] if val else None,
            )
        tab.write_tuning(folder / "tuning.csv", fitted)
        return out


def _arm_record(arm: Arm) -> dict[str, Any]:
    """The arm as its prediction files record it (a prompt arm as before probes and options existed, so older
    runs resume: options at their defaults are left out)."""
    at_default = {k for k, v in OPTION_DEFAULTS.items() if getattr(arm, k) == v}
    return arm.model_dump(exclude=at_default | ({"kind"} if arm.kind == "prompt" else set()), mode="json")


def _add_costs(entries: list[Entry], infos: dict[str, dict[str, Any]], arms: Sequence[Arm]) -> None:
    """Each arm's cost beside its metrics: seconds per patient and prompt tokens computed per patient (an order
    ensemble computes each of its orders' prompts)."""
    orders = {a.name: a.orders if a.demos != "none" else 1 for a in arms}
    for e in entries:
        info = infos.get(e.name, {})
        if e.kind == "arm" and "seconds_per_patient" in info:
            e.info["seconds_per_patient"] = round(info["seconds_per_patient"], 3)
            e.info["prompt_tokens"] = round(info["mean_prompt_tokens"] * orders.get(e.name, 1), 1)


def compare(
    config: CompareConfig | str | Path,
    test: str | Path | Sequence[Patient],
    pool: str | Path | Sequence[Patient],
    out: str | Path,
    *,
    val: str | Path | Sequence[Patient] | None = None,
    limit: int | None = None,
    only: Sequence[str] = (),
    progress: bool = True,
) -> CompareResult:
    """Every arm of a comparison and the baselines on the same test patients, with statistics, plots and a report
    (``icl compare`` as a function). An existing ``out`` is resumed: finished arms are checked and reused.

    Args:
        config: an ``arms.toml`` file, or a loaded :class:`~icl_toolkit.evaluation.compare.config.CompareConfig`.
        test: the test cohort (a file, or patients) with labels.
        pool: the demonstration pool and the baselines' training data (file or patients).
        out: the output folder (created; reused and resumed when it exists).
        val: a validation cohort (file or patients): the F1 thresholds are chosen on it.
        limit: only the first N test patients (overrides the config's ``limit``).
        only: run and report only these checkpoints' arms, or arms whose name matches a glob (staged runs).
        progress: show progress bars.

    Returns:
        The rows, contrasts and what ran (:class:`CompareResult`); the files are in ``out``.

    Raises:
        ConfigError: a config that does not validate (naming the key), a finished arm made under other settings, a
            test patient in the pool, an ``only`` that leaves out the reference arm.
    """
    from icl_toolkit.data.cohort import read_cohort

    cfg = config if isinstance(config, CompareConfig) else load_compare_config(config)[0]
    if limit:
        cfg = cfg.model_copy(update={"limit": limit})
    names: dict[str, str] = {}

    def cohort(name: str, x: str | Path | Sequence[Patient]) -> list[Patient]:
        if isinstance(x, str | Path):
            names[name] = str(x)
            return read_cohort(x)
        return list(x)

    patients = cohort("test", test), cohort("pool", pool), cohort("val", val) if val is not None else None
    files = {f"the {name} cohort": x for name, x in (("test", test), ("pool", pool), ("val", val))}
    task = cohorts_task(  # a task written in the config must agree with the cohorts'
        {k: v for k, v in files.items() if isinstance(v, str | Path)},
        cfg.task if cfg.task != ADRD else None,
        "the compare config",
    )
    if task != cfg.task:
        cfg = cfg.model_copy(update={"task": task})
    return Comparison(cfg, out, progress=progress).run(*patients, names=names, only=only)
