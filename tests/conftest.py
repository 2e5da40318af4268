from __future__ import annotations

import os

import pytest

# The suite runs in float32 on every machine, so that its numbers (parity within 1e-5, seeded repeats) do not
# depend on whether this CPU has native bf16; the bf16 paths are tested with dtype="bfloat16" given explicitly
# (tests/core/test_hardware.py). Subprocesses (the CLI, the benchmarks' quick modes) inherit this.
os.environ["ICL_CPU_BF16"] = "0"

from icl_toolkit.data.synth import SynthConfig, generate_cohort


@pytest.fixture(scope="session")
def small_cohort():
    """300 synthetic patients with rationales (about a second to build)."""
    return generate_cohort(SynthConfig(n=300, seed=11))


@pytest.fixture(scope="session")
def cohort_5000():
    """The 5,000-patient cohort the issue's acceptance numbers refer to."""
    return generate_cohort(SynthConfig(n=5000, seed=1))


@pytest.fixture(scope="session")
def lm_tokenizer():
    from icl_toolkit.core.models import load_tokenizer

    return load_tokenizer("default")


@pytest.fixture(scope="session")
def embedder_tokenizer():
    from icl_toolkit.core.models import load_embedder_tokenizer

    return load_embedder_tokenizer("default")


@pytest.fixture(scope="session")
def tiny_backend_obj():
    """The transformers backend over a tiny random Llama with the SmolLM2 tokenizer."""
    from icl_toolkit.backends.testing import tiny_backend

    return tiny_backend(seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama saved as a local checkpoint folder (for the CLI)."""
    from icl_toolkit.backends.testing import tiny_llama

    model, tok = tiny_llama(seed=0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def minilm():
    """The embedded all-MiniLM-L6-v2 profile embedder (loaded once)."""
    from icl_toolkit.retrieval.embedder import ProfileEmbedder

    return ProfileEmbedder()


@pytest.fixture(scope="session")
def hash_embedder():
    """A fast deterministic bag-of-words profile embedder (no model)."""
    from icl_toolkit.retrieval.embedder import HashEmbedder, ProfileEmbedder

    return ProfileEmbedder(model=HashEmbedder(), model_id="hash-64")


def _invoke(args):
    """Exit code and output of the ``icl`` CLI; library errors (which ``main`` prints) are part of the output."""
    from typer.testing import CliRunner

    from icl_toolkit.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    exc = res.exception
    text = res.output + ("" if exc is None or isinstance(exc, SystemExit) else str(exc))
    return res.exit_code, text


@pytest.fixture(scope="session")
def invoke():
    return _invoke
