"""A prepared check for a lent GPU machine: the transformers path on CUDA against CPU results made here.

The GPU machine has PyTorch, transformers, sentence-transformers and peft, but no vLLM, no faiss and no way to
download a model, and a call carries at most 64 MiB of files. So the check comes in two steps:

    # here (the toolkit installed): prompts built by the real retriever, a small model, the CPU results
    .venv/bin/python benchmarks/gpu_check.py prepare --out gpu_check_in            # ~1 min, ~17 MB
    # on the GPU machine (torch, transformers and peft only; the toolkit's backend too when it imports there)
    python benchmarks/gpu_check.py run --inputs gpu_check_in --out "$OUT"           # ~1-2 min on one GPU
    # the same run on this CPU (what the default test suite checks, with --small)
    .venv/bin/python benchmarks/gpu_check.py run --inputs gpu_check_in --device cpu --out /tmp/gpu_check

``prepare`` writes: the prompts (k=4 label demos from the `make demo` cohort's pool, retrieved here, so the GPU
needs no index and no faiss) as token ids and as text; a small random Llama with the SmolLM2 tokenizer (fp32,
13 MB: the embedded SmolLM2 is over 270 MB) and its P(yes) from the toolkit's transformers backend on this CPU;
the embedded SmolLM2's architecture (its ``config.json``) and this CPU's forward-pass throughput on it.

``run`` writes gpu_check.json: P(yes) on the device against the carried CPU values (fp32, target within 1e-3;
bf16 reported), through a torch-only scorer and, where the toolkit imports, through its ``HFBackend`` on that
device; prompt tokens/s of the SmolLM2-135M architecture (random weights: speed depends on the shapes, not the
values) in bf16 on the device against the carried CPU figure; and a short LoRA SFT run (peft, the answer token's
loss) with its seconds per step and loss before and after. Copy it to benchmarks/results/ to commit it.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

CHOICES = (" Yes", " No")
PARITY_MAX = 1e-3


# ---------------------------------------------------------------------------------------------- both machines


def _machine(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        hw = f"GPU {torch.cuda.get_device_name(0)}"
    else:
        try:  # the toolkit's own CPU description (with or without native bf16) where it imports
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from _common import machine

            return machine()
        except ImportError:
            hw = platform.processor() or platform.machine()
    return f"{hw}; Python {platform.python_version()}; torch {torch.__version__}"


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def p_yes_torch(model: Any, ctxs: list[list[int]], choice_ids: list[int], device: str) -> list[float]:
    """P(first choice) from the next-token distribution after each prompt, renormalised over the choices' tokens
    (what the toolkit's backends compute for one-token choices), one prompt per forward pass."""
    import torch

    out = []
    with torch.no_grad():
        for ids in ctxs:
            logits = model(torch.tensor([ids], device=device), logits_to_keep=1).logits[0, -1].float()
            lp = torch.log_softmax(logits, -1)[choice_ids]
            out.append(float(torch.softmax(lp, -1)[0]))
    return out


def throughput(config_file: Path, device: str, dtype: str, lengths: tuple[int, ...], batches: tuple[int, ...],
               reps: int = 3) -> list[dict[str, Any]]:
    """Prompt tokens per second of a randomly initialised model of ``config_file``'s architecture, forward pass
    only (the scoring path), per (batch size, prompt length): the best of ``reps`` timed passes after a warm-up."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(config_file))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype)).to(device).eval()
    rows = []
    with torch.no_grad():
        for length in lengths:
            for batch in batches:
                ids = torch.randint(0, config.vocab_size, (batch, length), device=device)
                model(ids, logits_to_keep=1)
                _sync(device)
                best = math.inf
                for _ in range(reps):
                    start = time.perf_counter()
                    model(ids, logits_to_keep=1)
                    _sync(device)
                    best = min(best, time.perf_counter() - start)
                rows.append({"device": device, "dtype": dtype, "batch": batch, "prompt_tokens": length,
                             "tokens_per_s": round(batch * length / best, 1)})
    del model
    return rows


def lora_steps(config_file: Path, device: str, steps: int, batch: int, length: int) -> dict[str, Any]:
    """A short LoRA SFT run (peft, rank 8 on the attention projections, AdamW) on the architecture of
    ``config_file`` with random weights, bf16 autocast on CUDA: the loss of an answer token after a fixed prompt
    batch, seconds per optimiser step, and the loss before and after (it must fall: gradients reach the adapter)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(config_file))
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(device)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                            lora_dropout=0.0, task_type="CAUSAL_LM"))
    ids = torch.randint(0, config.vocab_size, (batch, length), device=device)
    target = torch.randint(0, 2, (batch,), device=device) + 10  # two "answer" tokens, one per example
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast(
        "cpu", enabled=False)
    losses, times = [], []
    model.train()
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        with autocast:
            logits = model(input_ids=ids, logits_to_keep=1).logits[:, -1].float()
        loss = torch.nn.functional.cross_entropy(logits, target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter() - start)
        losses.append(float(loss))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"steps": steps, "batch": batch, "prompt_tokens": length, "trainable_params": trainable,
            "seconds_per_step": round(sorted(times[1:] or times)[len(times[1:] or times) // 2], 4),
            "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
            "loss_fell": losses[-1] < losses[0]}


def run(inputs: Path, out: Path, device: str, *, small: bool = False) -> dict[str, Any]:
    """The check on ``device`` with the inputs ``prepare`` wrote; writes ``out/gpu_check.json``."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device is visible here; run with --device cpu for the CPU mode")
    meta = json.loads((inputs / "inputs.json").read_text())
    ctxs, ref = meta["ctxs"], np.array(meta["p_yes_cpu"])
    model = AutoModelForCausalLM.from_pretrained(str(inputs / "model"), dtype=torch.float32).to(device).eval()
    got = np.array(p_yes_torch(model, ctxs, meta["choice_ids"], device))
    with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
        got_bf16 = np.array(p_yes_torch(model, ctxs, meta["choice_ids"], device))
    parity: dict[str, Any] = {
        "prompts": len(ctxs),
        "mean_prompt_tokens": round(float(np.mean([len(c) for c in ctxs])), 1),
        "max_abs_diff_fp32_torch": float(np.abs(got - ref).max()),
        "max_abs_diff_bf16_autocast": float(np.abs(got_bf16 - ref).max()),
        "target_max": PARITY_MAX,
    }
    try:  # the toolkit's own backend, where its dependencies (pydantic, rich) are installed on this machine
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from icl_toolkit.backends import choice_probabilities
        from icl_toolkit.backends.hf import HFBackend
    except ImportError as exc:
        parity["hf_backend"] = f"not importable here ({exc}); the torch-only scorer was checked against it on CPU"
    else:
        backend = HFBackend(str(inputs / "model"), device=device, dtype="float32", batch_size=4, progress=False)
        hf = np.array([choice_probabilities(s)[0] for s in backend.score(meta["prompts"], list(CHOICES))])
        parity["max_abs_diff_fp32_hf_backend"] = float(np.abs(hf - ref).max())
    worst = max(v for k, v in parity.items() if k.startswith("max_abs_diff_fp32"))
    parity["target_met"] = bool(worst <= PARITY_MAX)
    del model
    arch = inputs / "smollm2_config.json" if not small else inputs / "model" / "config.json"
    dtype = "bfloat16" if device.startswith("cuda") or small else meta["cpu"]["dtype"]
    lengths, batches = ((64,), (1, 2)) if small else ((1400,), (1, 8, 32) if device.startswith("cuda") else (1,))
    speed = throughput(arch, device, dtype, lengths, batches)
    cpu_rate = meta["cpu"]["tokens_per_s"]
    best = max(r["tokens_per_s"] for r in speed)
    result = {
        "device": device,
        "machine": _machine(device),
        "prepared_on": meta["machine"],
        "parity": parity,
        "throughput": speed,
        "cpu_throughput": meta["cpu"],
        "speedup_vs_cpu": round(best / cpu_rate, 1) if cpu_rate else None,
        "lora": lora_steps(arch, device, steps=4 if small else 10, batch=2 if small else 8,
                           length=32 if small else 512),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


# ---------------------------------------------------------------------------------------------- here only


def prepare(out: Path, n: int, *, small: bool = False) -> dict[str, Any]:
    """Prompts, the small model, its CPU P(yes) and this CPU's throughput on the SmolLM2 architecture, into ``out``."""
    import shutil

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import demo_cohort, machine

    from icl_toolkit.backends import choice_probabilities, plan_scoring
    from icl_toolkit.backends.hf import HFBackend
    from icl_toolkit.backends.testing import tiny_llama
    from icl_toolkit.core.hardware import cpu_bf16
    from icl_toolkit.core.models import resolve_lm
    from icl_toolkit.inference.config import PredictConfig
    from icl_toolkit.inference.predictor import Predictor
    from icl_toolkit.prompting.config import PromptConfig
    from icl_toolkit.retrieval.config import RetrievalConfig

    out.mkdir(parents=True, exist_ok=True)
    lm, tok = tiny_llama(seed=0)
    lm.save_pretrained(str(out / "model"))
    tok.save_pretrained(str(out / "model"))
    backend = HFBackend(str(out / "model"), dtype="float32", batch_size=1, progress=False)
    pool, test = demo_cohort(n, quick=small)
    cfg = PredictConfig(retrieval=RetrievalConfig(k=4), prompt=PromptConfig(demos="label", query_tokens=200,
                                                                            demo_tokens=120))
    predictor = Predictor(backend, cfg, progress=False).fit(pool)
    prompts = [bp.text for bp in predictor.build_prompts(test, predictor.retrieve(test))]
    plan = plan_scoring(backend.tokenizer, prompts, list(CHOICES), backend.max_context, backend.model_id)
    if plan.slow:
        raise SystemExit("the answer choices are not one token each with this tokenizer")
    p_cpu = [choice_probabilities(s)[0] for s in backend.score(prompts, list(CHOICES))]
    shutil.copy(resolve_lm("default") / "config.json", out / "smollm2_config.json")
    dtype = "bfloat16" if cpu_bf16() else "float32"
    arch = out / ("model/config.json" if small else "smollm2_config.json")
    cpu_speed = throughput(arch, "cpu", dtype, (64,) if small else (1400,), (1,), reps=1 if small else 3)[0]
    meta = {
        "machine": machine(),
        "prompts": prompts,
        "ctxs": plan.ctxs,
        "choices": list(CHOICES),
        "choice_ids": [c[0] for c in plan.conts[0]],
        "p_yes_cpu": p_cpu,
        "cpu": {**cpu_speed, "architecture": "SmolLM2-135M" if not small else "tiny"},
    }
    (out / "inputs.json").write_text(json.dumps(meta) + "\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out}: {len(prompts)} prompts, {size / 2**20:.1f} MiB; CPU {dtype} "
          f"{cpu_speed['tokens_per_s']} tokens/s ({meta['machine']})")
    return meta


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="here: prompts, the small model and the CPU results")
    p.add_argument("--out", type=Path, default=Path("gpu_check_in"))
    p.add_argument("--n", type=int, default=32, help="prompts")
    p.add_argument("--small", action="store_true", help="a seconds-long version (tests)")
    r = sub.add_parser("run", help="on the GPU machine (or --device cpu)")
    r.add_argument("--inputs", type=Path, default=Path("gpu_check_in"))
    r.add_argument("--out", type=Path, default=Path("."))
    r.add_argument("--device", default="cuda")
    r.add_argument("--small", action="store_true", help="a seconds-long version (tests)")
    args = ap.parse_args(argv)
    if args.step == "prepare":
        prepare(args.out, args.n, small=args.small)
    else:
        run(args.inputs, args.out, args.device, small=args.small)


if __name__ == "__main__":
    main()
