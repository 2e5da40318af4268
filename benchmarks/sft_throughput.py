"""SFT throughput on CPU: `icl finetune` through TRL's SFTTrainer against the hand-written loop it replaced.

    .venv/bin/python benchmarks/sft_throughput.py            # full run (about 12 min on 2 cores)
    .venv/bin/python benchmarks/sft_throughput.py --quick --model PATH   # seconds, for the smoke test

Arms, on the same tokenised examples (the first ``--n`` training patients of the
`make paper` cohort, ``--target`` rationale: the longest sequences), the same
trainable parameters (top 8 of 30 blocks, embeddings frozen), batch size, steps
and learning-rate schedule, one after another in one run, each in its own child
process (loading is not timed):

* ``hand-written loop``: the loop `icl finetune` ran before issue 17 (AdamW,
  linear warm-up and decay, clipping, length-padded batches, the output layer
  applied at target positions only), float32, reproduced here as the baseline
  and fed the very batches TRL's seeded sampler and collator make (so padding
  is the same in every arm; the first losses agree);
* ``TRL float32``: `icl finetune`'s trainer (``Finetuner._trainer``: TRL
  ``SFTTrainer``, completion-only loss, with the toolkit's CPU extension that
  applies the output layer at target positions only) in float32, including its
  one resumable trainer save timed apart (``save_seconds``: a real run saves at
  each evaluation; the loop saved nothing);
* ``TRL float32, TRL's own loss``: the same without the extension (TRL's fused
  output layer, which on a CPU projects every position): why the extension exists;
* ``TRL bf16``: the same under bf16 autocast (fp32 master weights), what
  ``--dtype auto`` picks on a CPU with native bf16; skipped on one without.

Target (issue 17): TRL float32 at least 0.9x the hand-written loop's examples/s.
Also reported: target tokens/s, the first and last training losses (so a faster
arm that learns differently shows). Writes sft_throughput.csv.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, demo_cohort, in_child, machine, write_csv  # noqa: E402

from icl_toolkit.core import hardware  # noqa: E402


def _setup(model: str, n: int, target: str, quick: bool, batch_size: int, steps: int, dtype: str):
    from icl_toolkit.training.config import FinetuneConfig
    from icl_toolkit.training.sft import Finetuner, build_examples

    pool, _ = demo_cohort(0, quick=quick)
    cfg = FinetuneConfig(target=target, max_steps=steps, batch_size=batch_size, lr=1e-4, train_layers=8 if not quick
                         else None, query_tokens=160 if not quick else 120, eval_steps=steps, dtype=dtype, seed=0)
    tuner = Finetuner(cfg, base=model, progress=False)
    trainable, causal, tok = tuner._prepare()
    examples = build_examples(pool[:n], tok, target, query_tokens=cfg.query_tokens)
    return tuner, trainable, causal, tok, examples


def arm_loop(model: str, n: int, target: str, quick: bool, batch_size: int, steps: int) -> dict:
    """The pre-TRL loop of `icl finetune` (commit a829fa5), float32, on the very batches TRL's sampler makes."""
    import torch
    import torch.nn.functional as F
    from transformers import get_linear_schedule_with_warmup, set_seed

    tuner, trainable, causal, tok, examples = _setup(model, n, target, quick, batch_size, steps, "float32")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = tuner._trainer(trainable, causal, tok, examples, [], [], Path(tmp), steps)
        set_seed(0)  # as trainer.train() does before it draws the example order
        batches = list(trainer.get_train_dataloader())[:steps]
    params = [p for p in trainable.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    sched = get_linear_schedule_with_warmup(opt, math.ceil(0.1 * steps), steps)
    losses = []
    trainable.train()
    start = time.perf_counter()
    for batch in batches:
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        hidden = causal.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        nxt = labels[:, 1:]
        sel = nxt != -100
        loss = F.cross_entropy(causal.get_output_embeddings()(hidden[:, :-1][sel]).float(), nxt[sel])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    secs = time.perf_counter() - start
    return _result(secs, examples, steps, batch_size, losses)


def arm_trl(model: str, n: int, target: str, quick: bool, batch_size: int, steps: int, dtype: str,
            own_loss: bool = False) -> dict:
    from transformers.trainer_utils import SaveStrategy

    tuner, trainable, causal, tok, examples = _setup(model, n, target, quick, batch_size, steps, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        trainer = tuner._trainer(trainable, causal, tok, examples, [], [], Path(tmp), steps)
        if own_loss:
            trainer.target_positions_only = False
        trainer.args.save_strategy = SaveStrategy.NO  # timed apart below, as the loop saves nothing
        setup = time.perf_counter() - start
        start = time.perf_counter()
        trainer.train()
        secs = time.perf_counter() - start
        start = time.perf_counter()
        trainer._save_checkpoint(trainer.model, trial=None)  # one resumable save (weights, optimiser, RNG)
        save = time.perf_counter() - start
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return _result(secs, examples, steps, batch_size, losses) | {"setup_seconds": round(setup, 2),
                                                                 "save_seconds": round(save, 2)}


def _result(secs: float, examples: list, steps: int, batch_size: int, losses: list[float]) -> dict:
    seen = steps * batch_size
    per = sum(e.n_target for e in examples) / len(examples)
    return {"seconds": secs, "examples_per_s": seen / secs, "target_tokens_per_s": seen * per / secs,
            "first_loss": losses[0], "last_loss": losses[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=64, help="training patients (examples)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--target", default="rationale", choices=["label", "rationale", "stepwise"])
    ap.add_argument("--quick", action="store_true", help="12 examples, 3 steps of 4 (the smoke test)")
    ap.add_argument("--out", type=Path, default=RESULTS / "sft_throughput.csv")
    args = ap.parse_args()
    n, steps, bs = (12, 3, 4) if args.quick else (args.n, args.steps, args.batch_size)
    where = machine()
    print(f"machine: {where}", flush=True)
    common = (args.model, n, args.target, args.quick, bs, steps)
    arms = [("hand-written loop", "float32", in_child(arm_loop, *common)),
            ("TRL SFTTrainer", "float32", in_child(arm_trl, *common, "float32")),
            ("TRL SFTTrainer, TRL's own loss", "float32", in_child(arm_trl, *common, "float32", True))]
    if hardware.cpu_bf16():
        arms.append(("TRL SFTTrainer", "bfloat16", in_child(arm_trl, *common, "bfloat16")))
    else:
        print(f"bf16 arm skipped: {hardware.cpu_name()} has no native bf16", flush=True)
    base = arms[0][2]["examples_per_s"]
    rows = [{"arm": name, "dtype": dtype, "target": args.target, "examples": n, "steps": steps, "batch_size": bs,
             "seconds": round(r["seconds"], 2), "setup_seconds": r.get("setup_seconds", ""),
             "save_seconds": r.get("save_seconds", ""),
             "examples_per_s": round(r["examples_per_s"], 3), "target_tokens_per_s": round(r["target_tokens_per_s"], 1),
             "ratio_vs_loop": round(r["examples_per_s"] / base, 3), "first_loss": round(r["first_loss"], 4),
             "last_loss": round(r["last_loss"], 4), "machine": where} for name, dtype, r in arms]
    write_csv(args.out, rows)
    print(f"{'arm':32s} {'dtype':9s} {'ex/s':>7s} {'tok/s':>7s} {'x loop':>7s} {'loss':>15s}")
    for r in rows:
        print(f"{r['arm']:32s} {r['dtype']:9s} {r['examples_per_s']:7.3f} {r['target_tokens_per_s']:7.1f} "
              f"{r['ratio_vs_loop']:7.3f} {r['first_loss']:7.3f}->{r['last_loss']:.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
