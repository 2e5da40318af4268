"""Choose a stop rule for reason mode on validation patients (issue: the step-by-step checkpoint loops).

Each candidate rule runs the step-by-step SFT checkpoint of the powered recipe in reason mode on the recipe's 64
validation patients (the first 64, as ``recipes/paper_powered.toml`` draws them); the rule without options reuses
that arm's committed validation predictions. For each: how many reasonings loop (a step heading repeated), the
validation AUROC and seconds per patient, and how many are unfinished (looping, or run to the token limit); the
choice (:func:`icl_toolkit.evaluation.reasoning.choose_stop_rule`, by unfinished reasonings) reads validation
numbers only. Resumable: each candidate's predictions are appended to its own file.

    .venv/bin/python recipes/stop_rule.py            # writes results/paper_powered/stop_rule/
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

CANDIDATES: dict[str, dict[str, object]] = {
    "none": {},
    "stop at a fifth step": {"stop": ("\nStep 5:",)},
    "no repeated 4-grams": {"no_repeat_ngram": 4},
    "repetition penalty 1.3": {"repetition_penalty": 1.3},
}


def main() -> None:
    from sklearn.metrics import roc_auc_score

    from icl_toolkit.backends.options import open_backend
    from icl_toolkit.core.artifacts import write_csv_rows, write_json_atomic
    from icl_toolkit.core.hardware import describe
    from icl_toolkit.core.models import load_tokenizer
    from icl_toolkit.data.cohort import read_cohort
    from icl_toolkit.evaluation.compare import load_compare_config
    from icl_toolkit.evaluation.compare.run import draw_validation
    from icl_toolkit.evaluation.reasoning import choose_stop_rule, count_looping, count_unfinished
    from icl_toolkit.inference.config import PredictConfig
    from icl_toolkit.inference.output import OutputFile, read_records
    from icl_toolkit.inference.predictor import Predictor
    from icl_toolkit.inference.run import predict_to_file

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="recipes/paper_powered.toml")
    ap.add_argument("--val", default="recipe_out/splits/val.jsonl")
    ap.add_argument("--pool", default="recipe_out/splits/train.jsonl")
    ap.add_argument("--results", default="results/paper_powered")
    ap.add_argument("--checkpoint", default="stepwise_sft")
    args = ap.parse_args()

    config, _ = load_compare_config(args.config)
    val = draw_validation(read_cohort(args.val), config.val_limit, config.val_draw)
    arm = next(a for a in config.arms() if a.checkpoint == args.checkpoint and a.mode == "reason" and not a.variant)
    out = Path(args.results) / "stop_rule"
    out.mkdir(parents=True, exist_ok=True)
    backend = None
    rows = []
    tokenizer = load_tokenizer("default")

    def spec_of(options: dict[str, object]) -> PredictConfig:
        return PredictConfig.from_options(**config.shared_options(), **arm.options(), **options).for_model(
            config.checkpoints[arm.checkpoint]
        )

    for name, options in CANDIDATES.items():
        path = Path(args.results) / "arms" / f"{arm.slug}.val.jsonl" if not options else out / f"{name.replace(' ', '_')}.val.jsonl"
        if len([r for r in read_records(path)]) < len(val):
            backend = backend or open_backend(config.checkpoints[arm.checkpoint], config.engine, progress=False)
            predictor = Predictor(backend, spec_of(options), progress=False).fit(read_cohort(args.pool))
            start = time.perf_counter()
            predict_to_file(predictor, val, OutputFile(path, predictor.provenance(val), resume=True), progress=True)
            print(f"{name}: {time.perf_counter() - start:.0f}s", flush=True)
        records = {r["patient_id"]: r for r in read_records(path)}
        chosen = [records[p.patient_id] for p in val]
        y = [p.label for p in val]
        rows.append(
            {
                "name": name,
                "options": json.dumps(options),
                "n": len(chosen),
                "looping": count_looping(chosen),
                "unfinished": count_unfinished(chosen, tokenizer, spec_of(options).prompt.reason_tokens),
                "val_auroc": round(float(roc_auc_score(y, [r["probability"] for r in chosen])), 4),
                "seconds_per_patient": round(sum(r["seconds"] for r in chosen) / len(chosen), 3),
            }
        )
    write_csv_rows(out / "stop_rule.csv", rows)
    choice = choose_stop_rule(rows)
    write_json_atomic(out / "choice.json", {"chosen": choice, "candidates": rows, "hardware": describe()})
    for r in rows:
        print(r)
    print("chosen:", choice["name"])


if __name__ == "__main__":
    main()
