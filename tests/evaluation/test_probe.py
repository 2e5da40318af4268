"""The probe arm: hidden states equal a direct forward pass, choices read validation patients only, the cache
is reused, and a tiny icl compare with a probe, tuned baselines and recalibration runs end to end."""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest

from icl_toolkit.backends.hf import HFBackend
from icl_toolkit.backends.testing import tiny_llama
from icl_toolkit.core.errors import ConfigError
from icl_toolkit.evaluation import probe as pr
from icl_toolkit.evaluation.compare import CompareConfig, Comparison


@pytest.fixture(scope="module")
def backend():
    model, tok = tiny_llama(seed=0)
    return HFBackend.from_objects(model, tok, model_id="tiny", batch_size=3)


def test_states_equal_a_direct_forward_pass(backend):
    import torch

    from icl_toolkit.backends import encode_prompt

    prompts = ["Patient: 71-year-old woman. Diagnoses: hypertension.", "A much longer prompt " * 12, "Short."]
    layers = [1, backend.n_layers]
    got = backend.prompt_states(prompts, layers)
    assert got.shape == (3, 2, 2, backend.model.config.hidden_size)
    for i, text in enumerate(prompts):  # one at a time, no padding
        ids = torch.tensor([encode_prompt(backend.tokenizer, text)])
        with torch.inference_mode():
            hs = backend.model(input_ids=ids, output_hidden_states=True).hidden_states
        for j, layer in enumerate(layers):
            np.testing.assert_allclose(got[i, j, 0], hs[layer][0].float().mean(0).numpy(), atol=1e-4)
            np.testing.assert_allclose(got[i, j, 1], hs[layer][0, -1].float().numpy(), atol=1e-4)


def test_probe_layers_and_choices():
    assert pr.probe_layers(30) == [5, 10, 15, 20, 25, 30] and pr.probe_layers(2) == [1, 2]
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    states = rng.normal(size=(120, 2, 2, 8)).astype(np.float32)
    states[:, 1, 1, 0] += 2.0 * y  # the signal is in layer 2's last token
    yv = rng.integers(0, 2, 60)
    val = rng.normal(size=(60, 2, 2, 8)).astype(np.float32)
    val[:, 1, 1, 0] += 2.0 * yv
    choice, trials = pr.choose_probe(states, y, val, yv, [1, 2])
    assert (choice["layer"], choice["pooling"]) == (2, "last") and len(trials) == 2 * 2 * len(pr.PROBE_C)
    default, none = pr.choose_probe(states, y, None, None, [1, 2, 3, 4])
    assert none == [] and default["pooling"] == "mean" and "stated default" in default["chosen_by"]
    with pytest.raises(ConfigError, match="both classes"):
        pr.choose_probe(states, np.zeros(120, int), val, yv, [1, 2])


def test_probe_config_rules():
    with pytest.raises(ConfigError, match="zero-shot prompt"):
        CompareConfig.model_validate({"arm": [{"kind": "probe", "demos": "label"}]}).arms()
    arms = CompareConfig.model_validate({"arm": [{}, {"kind": "probe"}]}).arms()
    assert [a.name for a in arms] == ["base / none / score", "base / probe"]


def test_tiny_compare_with_probe_tuned_baselines_and_recalibration(small_cohort, tiny_model_dir, tmp_path):
    pool, val, test = small_cohort[:150], small_cohort[150:200], small_cohort[200:260]
    config = CompareConfig.model_validate({
        "checkpoints": {"base": str(tiny_model_dir)}, "arm": [{}, {"kind": "probe"}], "bootstrap": 50,
        "fairness_bootstrap": 0, "baselines": ["logreg", "gbt", "age"], "tabular": {"trials": 2},
        "prompt": {"query_tokens": 100}})
    first = Comparison(config, tmp_path / "out", progress=False)
    result = first.run(test, pool, val)
    rows = {r["name"]: r for r in result.rows}
    assert {"base / probe", "gbt windowed counts", "logreg codes+age+sex"} <= set(rows)
    questions = {(c["a"], c["b"]): c["question"] for c in result.contrasts}
    assert questions[("base / probe", "base / none / score")].startswith("does the model represent")
    best = [k for k, q in questions.items() if q.startswith("the best language-model arm")]
    assert len(best) == 1 and best[0][1] in ("gbt windowed counts", "logreg codes+age+sex")
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Probes" in report and "## Recalibration" in report and "## Tuned baselines" in report
    sel = list(csv.DictReader(open(tmp_path / "out" / "probes" / "base_probe" / "selection.csv")))
    assert len(sel) == len(pr.probe_layers(2)) * 2 * len(pr.PROBE_C)
    # a rerun reuses the arms; with test labels permuted nothing chosen changes
    probe_before = (tmp_path / "out" / "arms" / "base_probe.jsonl").read_text()
    shuffled = [dataclasses.replace(p, label=y) for p, y in
                zip(test, np.random.default_rng(1).permutation([p.label for p in test]).tolist())]
    again = Comparison(config, tmp_path / "out2", progress=False)
    again.run(shuffled, pool, val)
    a = {r["patient_id"]: r["probability"] for r in map(eval_json, probe_before.splitlines())}
    b = {r["patient_id"]: r["probability"]
         for r in map(eval_json, (tmp_path / "out2" / "arms" / "base_probe.jsonl").read_text().splitlines())}
    assert a == b
    assert set(again.tabular) == {"logreg codes+age+sex", "gbt windowed counts"}
    assert {k: v["params"] for k, v in again.tabular.items()} == {k: v["params"] for k, v in first.tabular.items()}
    assert again.probes["base / probe"]["layer"] == first.probes["base / probe"]["layer"]
    # the cached states are read back: with the arm's files gone, the probe reruns without a forward pass
    for f in (tmp_path / "out" / "arms").glob("base_probe*"):
        f.unlink()
    cached = HFBackend(str(tiny_model_dir), progress=False)
    cached.prompt_states = lambda *a, **k: pytest.fail("the cache was not used")  # type: ignore[method-assign]
    Comparison(config, tmp_path / "out", progress=False, backend_factory=lambda name, model: cached).run(
        test, pool, val)
    redone = (tmp_path / "out" / "arms" / "base_probe.jsonl").read_text().splitlines()
    assert {r["patient_id"]: r["probability"] for r in map(eval_json, redone)} == a


def eval_json(line):
    import json

    return json.loads(line)
