from __future__ import annotations

import pytest

from icl_toolkit.synth import SynthConfig, generate_cohort


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
    from icl_toolkit.models import load_tokenizer

    return load_tokenizer("default")


@pytest.fixture(scope="session")
def embedder_tokenizer():
    from icl_toolkit.models import load_embedder_tokenizer

    return load_embedder_tokenizer("default")
