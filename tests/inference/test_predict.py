"""The predictor and `icl predict`, end to end on a tiny random Llama."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from icl_toolkit.cli import app
from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.cohort import write_cohort
from icl_toolkit.inference.config import PredictConfig
from icl_toolkit.inference.predictor import Predictor
from icl_toolkit.prompting.config import PromptConfig
from icl_toolkit.retrieval.config import RetrievalConfig

runner = CliRunner()

@pytest.fixture(scope="module")
def files(small_cohort, tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    write_cohort(small_cohort[:120], d / "train.jsonl")
    write_cohort(small_cohort[200:230], d / "test.jsonl")
    return d


def test_unfitted_predictor_raises(tiny_backend_obj):
    with pytest.raises(ConfigError, match="not fitted"):
        Predictor(tiny_backend_obj).predict_proba([])


def test_predict_proba_records_provenance(tiny_backend_obj, hash_embedder, small_cohort):
    pool, test = small_cohort[:150], small_cohort[150:160]
    pred = Predictor(tiny_backend_obj, PredictConfig(retrieval=RetrievalConfig(k=3)), embedder=hash_embedder,
                     progress=False).fit(pool)
    out = pred.predict_proba(test)
    assert len(out) == 10
    direct = tiny_backend_obj.score(pred.build_prompts(test, pred.retrieve(test))[0].text, [" Yes", " No"])
    for p, r in zip(test, out):
        assert r.patient_id == p.patient_id and 0.0 < r.probability < 1.0
        assert r.predicted == int(r.probability >= 0.5) and r.label == p.label
        assert len(r.demos) == 3 and p.patient_id not in {d["patient_id"] for d in r.demos}
        assert r.prompt_hash.startswith("sha256:") and r.model_id == "tiny-llama-0"
    assert out[0].logprobs == pytest.approx(direct, abs=1e-4)
    single = pred.predict_proba(test[0])
    assert single.probability == pytest.approx(out[0].probability, abs=1e-6)
    assert pred.predict(test) == [r.predicted for r in out]


def test_reason_mode_generates_then_scores(tiny_backend_obj, hash_embedder, small_cohort):
    config = PredictConfig(retrieval=RetrievalConfig(k=2), prompt=PromptConfig(mode="reason", reason_tokens=8))
    pred = Predictor(tiny_backend_obj, config, embedder=hash_embedder, progress=False).fit(small_cohort[:100])
    out = pred.predict_proba(small_cohort[100:103])
    assert all(isinstance(r.reasoning, str) and r.template == "reason_first" for r in out)


def test_missing_rationales_with_rationale_demos_is_an_error(tiny_backend_obj, hash_embedder, small_cohort):
    import dataclasses

    pool = [dataclasses.replace(p, rationales=None) for p in small_cohort[:20]]
    with pytest.raises(ConfigError, match="--demos label"):
        Predictor(tiny_backend_obj, embedder=hash_embedder, progress=False).fit(pool)
    # label-only demos do not need them
    Predictor(tiny_backend_obj, PredictConfig(prompt=PromptConfig(demos="label")), embedder=hash_embedder,
              progress=False).fit(pool)


def _predict_args(files, tiny_model_dir, out, *extra):
    return ["predict", "--cohort", str(files / "test.jsonl"), "--pool", str(files / "train.jsonl"),
            "--model", str(tiny_model_dir), "--out", str(out), "--k", "2", *extra]


def test_icl_predict_end_to_end(files, tiny_model_dir, tmp_path):
    out = tmp_path / "preds.jsonl"
    res = runner.invoke(app, _predict_args(files, tiny_model_dir, out, "--retrieval", str(tmp_path / "ret.json")))
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 30 and len({r["patient_id"] for r in records}) == 30
    keys = {"patient_id", "probability", "predicted", "demos", "prompt_tokens", "dropped_demos", "prompt_hash",
            "model_id", "label"}
    assert keys <= set(records[0])
    assert all(len(r["demos"]) == 2 and {"patient_id", "score", "label"} <= set(r["demos"][0]) for r in records)
    assert "AUROC=" in res.output and "Brier=" in res.output and "n=30" in res.output
    meta = json.loads((tmp_path / "preds.jsonl.meta.json").read_text())
    assert meta["artifact"] == "predictions" and meta["config"]["retrieval"]["k"] == 2
    # an index built first gives the same demonstrations
    idx = tmp_path / "idx"
    assert runner.invoke(app, ["index", "build", "--pool", str(files / "train.jsonl"), "--out", str(idx)]).exit_code == 0
    out2 = tmp_path / "preds2.jsonl"
    res = runner.invoke(app, _predict_args(files, tiny_model_dir, out2, "--index", str(idx)))
    assert res.exit_code == 0, res.output
    again = [json.loads(line) for line in out2.read_text().splitlines()]
    assert [r["demos"] for r in again] == [r["demos"] for r in records]
    assert [r["probability"] for r in again] == pytest.approx([r["probability"] for r in records], abs=1e-6)


def test_interrupt_and_resume_gives_every_patient_exactly_once(files, tiny_model_dir, tmp_path, monkeypatch, invoke):
    from icl_toolkit.backends.hf import HFBackend

    out = tmp_path / "preds.jsonl"
    real_score = HFBackend.score
    calls = {"n": 0}

    def flaky(self, prompts, choices):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_score(self, prompts, choices)

    monkeypatch.setattr(HFBackend, "score", flaky)
    res = runner.invoke(app, _predict_args(files, tiny_model_dir, out, "--chunk-size", "4"))
    assert res.exit_code != 0
    partial = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(partial) == 8  # two chunks were finished and written
    with open(out, "a") as fh:  # a torn line, as from a kill during a write
        fh.write('{"patient_id": "S11-0')
    monkeypatch.setattr(HFBackend, "score", real_score)
    code, text = invoke(_predict_args(files, tiny_model_dir, out, "--chunk-size", "4"))
    assert code == 1 and "--resume" in text
    res = runner.invoke(app, _predict_args(files, tiny_model_dir, out, "--chunk-size", "4", "--resume"))
    assert res.exit_code == 0, res.output
    ids = [json.loads(line)["patient_id"] for line in out.read_text().splitlines()]
    assert len(ids) == 30 and len(set(ids)) == 30
    # resuming with other settings is refused
    code, text = invoke(_predict_args(files, tiny_model_dir, out, "--k", "3", "--resume"))
    assert code == 1 and "does not match" in text
    # ... naming the one field that differs, not two dumps of every setting
    said = " ".join(text.split())
    assert re.search(r"config\.retrieval\.k: built with \d, now 3", said) and "config.prompt" not in said, said


@pytest.mark.parametrize("extra,message", [
    (["--k", "200"], "larger than the demonstration pool"),
    (["--strategy", "nearest"], "nearest"),
    (["--demo-tokens", "10"], "--demo-tokens"),
])
def test_bad_options_give_one_line_errors(files, tiny_model_dir, tmp_path, extra, message, invoke):
    code, text = invoke(_predict_args(files, tiny_model_dir, tmp_path / "p.jsonl", *extra))
    assert code != 0 and message in text
    assert "Traceback" not in text


def test_unreadable_cohort_and_missing_rationales(files, tiny_model_dir, tmp_path, small_cohort, invoke):
    import dataclasses
    import subprocess
    import sys

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"patient_id": "x"}\n')
    args = _predict_args(files, tiny_model_dir, tmp_path / "p.jsonl")
    args[args.index("--cohort") + 1] = str(bad)
    code, text = invoke(args)
    assert code != 0 and "bad.jsonl:1" in text
    pool = tmp_path / "norat.jsonl"
    write_cohort([dataclasses.replace(p, rationales=None) for p in small_cohort[:50]], pool)
    args = _predict_args(files, tiny_model_dir, tmp_path / "q.jsonl")
    args[args.index("--pool") + 1] = str(pool)
    proc = subprocess.run([sys.executable, "-c", "from icl_toolkit.cli import main; main()", *args],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "no free_text rationale" in proc.stderr and "Traceback" not in proc.stderr


def test_a_patient_is_written_once(tmp_path):
    from icl_toolkit.inference.output import OutputFile

    out = OutputFile(tmp_path / "p.jsonl", {"model_id": "m"})
    out.write([{"patient_id": "1"}])
    with pytest.raises(ConfigError, match="patient '1' would be written twice"):
        out.write([{"patient_id": "1"}])
    with pytest.raises(ConfigError, match="patient '2' would be written twice"):
        out.write([{"patient_id": "2"}, {"patient_id": "2"}])
    assert [r["patient_id"] for r in out.records()] == ["1"]


def test_writer_refuses_to_clobber(tmp_path):
    from icl_toolkit.inference.output import OutputFile

    path = tmp_path / "p.jsonl"
    path.write_text("")
    with pytest.raises(ConfigError, match="--overwrite"):
        OutputFile(path, {"model_id": "m"})


def test_embedded_model_follows_its_demonstrations(small_cohort):
    """With the default prompt layout, SmolLM2 says "Yes" more after "Yes" demos than after "No" demos."""
    from icl_toolkit.backends import choice_probabilities
    from icl_toolkit.backends.hf import HFBackend
    from icl_toolkit.prompting.builder import PromptBuilder
    from icl_toolkit.retrieval.retriever import Hit

    backend = HFBackend("default", progress=False)
    builder = PromptBuilder(backend.tokenizer, PromptConfig(demos="label", demo_tokens=120, query_tokens=150),
                            backend.max_context)
    pool = {p.patient_id: p for p in small_cohort[:100]}
    query = small_cohort[150]
    probs = {}
    for label in (0, 1):
        group = [p for p in pool.values() if p.label == label][:3]
        hits = [Hit(p.patient_id, 0.9 - 0.01 * i, label, i) for i, p in enumerate(group)]
        bp = builder.build(query, hits, pool)
        probs[label] = choice_probabilities(backend.score(bp.text, bp.choices))[0]
    assert probs[1] > probs[0] + 0.2, probs


def test_the_python_api_says_what_to_pass(tmp_path, small_cohort, tiny_model_dir):
    """A path or record dicts where patients are expected: an error saying what to pass, not an AttributeError."""
    from icl_toolkit.backends.testing import tiny_backend
    from icl_toolkit.data.cohort import patient_to_dict

    predictor = Predictor(tiny_backend(), PredictConfig.from_options(k=0))
    with pytest.raises(ConfigError, match=r"pool: got the path 'train.jsonl', expected patients; pass "
                                          r"icl.read_cohort\('train.jsonl'\)"):
        predictor.fit("train.jsonl")
    with pytest.raises(ConfigError, match=r"pool\[0\]: expected a Patient, got dict \(a record dict"):
        predictor.fit([patient_to_dict(small_cohort[0])])
    fitted = predictor.fit([])
    with pytest.raises(ConfigError, match="patients: got the path"):
        fitted.predict_proba(tmp_path / "test.jsonl")
    assert fitted.predict_proba(small_cohort[0]).patient_id == small_cohort[0].patient_id   # one in, one out
