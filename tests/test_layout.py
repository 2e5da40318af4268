"""The architecture stays as the README's layout says: one spec, one run loop, one strategy list, one option
mapping, the vocabulary at the bottom (checks on the source text, so a copy that creeps back in fails here)."""

from __future__ import annotations

import re
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "icl_toolkit"


def _sources() -> dict[str, str]:
    return {str(p.relative_to(PKG)): p.read_text(encoding="utf-8") for p in PKG.rglob("*.py")}


def _where(pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return sorted(name for name, text in _sources().items() if rx.search(text))


def test_the_strategy_list_is_spelled_out_once():
    assert _where(r"""["']similar["'],\s*["']balanced["']""") == ["retrieve.py"]
    assert _where(r"""["']rationale["'],\s*["']label["'],\s*["']none["']""") == ["prompting.py"]


def test_one_run_loop_appends_records():
    assert _where(r"""open\([^)]*["']a["']""") == ["run.py"]
    assert _where(r"def run_resumable\(") == ["run.py"]
    # icl predict, icl rationales generate and icl compare's arms all go through it
    src = _sources()
    assert "predict_to_file(" in src["run.py"].split("def predict_cohort_file(")[1]
    assert "run_resumable(" in src["rationales.py"].split("def generate_rationales_file(")[1]
    assert "predict_to_file(" in src["compare/run.py"]
    # the commands only parse flags and print
    assert "predict_cohort_file(" in src["cli/predict.py"] and "generate_rationales_file(" in src["cli/rationales.py"]
    for command in ("cli/predict.py", "cli/rationales.py"):
        assert "read_cohort" not in src[command] and "open_backend" not in src[command], command


def test_the_spec_is_built_in_one_place():
    """Front ends build predictions' settings through PredictConfig.from_options, never section by section."""
    assert _where(r"RetrievalConfig\(") == ["retrieve.py"]
    assert _where(r"PromptConfig\(") == ["prompting.py"]
    for front_end in ("cli/_common.py", "compare/config.py", "serve/service.py"):
        assert "from_options" in _sources()[front_end], front_end
    # "k = 0 means no demonstrations" is decided in the spec only
    assert _where(r"k\s*==\s*0") == ["retrieve.py", "spec.py"]


def test_backends_own_their_options():
    text = _sources()["backends/options.py"]
    assert 'if name == "hf"' not in text and "_ONLY" not in text
    for name in ("hf.py", "vllm.py", "openai_api.py"):
        assert "engine_options = (" in _sources()[f"backends/{name}"]


def test_the_vocabulary_sits_at_the_bottom():
    text = _sources()["vocabulary.py"]
    assert "icl_toolkit" not in re.sub(r'""".*?"""', "", text, flags=re.S).replace("icl_toolkit.vocabulary", "")
    for name in ("serialize.py", "grounding.py", "omop/build.py"):
        assert "synth" not in "".join(l for l in _sources()[name].splitlines(True) if l.startswith(("from", "import")))
