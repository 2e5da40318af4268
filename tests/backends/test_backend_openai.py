"""The openai backend: the backend contract over an OpenAI-compatible completions API.

The real server (vllm serve) is exercised by ``make test-vllm``. Here a reference
server, written in the test over the tiny random Llama, answers the completions
protocol the way vLLM documents it (prompt token ids; echo with logprobs; the
next position's log-probabilities of ``logprob_token_ids``, keyed ``token_id:N``),
so the client's request layout and response reading are checked against exact
numbers, and its errors against a closed port and bad answers. ``legacy`` plays a
server that ignores ``logprob_token_ids`` and ``reject`` one that refuses it.
"""

from __future__ import annotations

import json
import socket

import httpx
import numpy as np
import pytest
import torch

from icl_toolkit.backends import GenerationParams
from icl_toolkit.core.errors import ConfigError

SERVED = "tiny"


class ReferenceServer:
    """``/v1/models`` and ``/v1/completions`` over a transformers model, with request logging."""

    def __init__(self, model, tokenizer, *, models=(SERVED,), key=None, broken=None, adapters=None):
        self.model, self.tok, self.models, self.key, self.broken = model, tokenizer, models, key, broken
        # LoRA adapters as vllm serve --lora-modules lists them: name -> (merged model, folder it was loaded from)
        self.adapters = adapters or {}
        self.requests: list[dict] = []

    def _token_logprobs(self, lm, ids: list[int]) -> tuple[list, int, float]:
        with torch.no_grad():
            logits = lm(torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        echoed = [None] + [float(logp[t - 1, ids[t]]) for t in range(1, len(ids))]
        nxt = int(logp[-1].argmax())
        return echoed, nxt, float(logp[-1, nxt])

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.key and request.headers.get("authorization") != f"Bearer {self.key}":
            return httpx.Response(401, json={"error": "unauthorized"})
        if request.url.path.endswith("/models"):
            cards = [{"id": m, "max_model_len": 4096, "parent": None} for m in self.models]
            cards += [{"id": n, "root": str(root), "parent": self.models[0]} for n, (_, root) in self.adapters.items()]
            return httpx.Response(200, json={"data": cards})
        body = json.loads(request.content)
        self.requests.append(body)
        lm = self.adapters[body["model"]][0] if body.get("model") in self.adapters else self.model
        if self.broken == "count":
            return httpx.Response(200, json={"choices": []})
        if self.broken == "no-echo":
            return httpx.Response(200, json={"choices": [{"index": i, "text": "x", "logprobs": None}
                                                         for i in range(len(body["prompt"]))]})
        if self.broken == "echo-500" and body.get("echo"):  # vLLM with --enable-lora on prompt log-probs
            return httpx.Response(500, json={"error": {"message": "EngineCore encountered an issue."}})
        if self.broken == "reject" and "logprob_token_ids" in body:
            return httpx.Response(400, json={"error": "extra inputs are not permitted: logprob_token_ids"})
        choices = []
        for i, ids in enumerate(body["prompt"]):
            if body.get("logprob_token_ids") and self.broken != "legacy":
                with torch.no_grad():
                    logp = torch.log_softmax(lm(torch.tensor([ids])).logits[0, -1].float(), -1)
                nxt = int(logp.argmax())
                tops = {f"token_id:{t}": float(logp[t]) for t in body["logprob_token_ids"]}
                choices.append({"index": i, "text": f"token_id:{nxt}",
                                "logprobs": {"tokens": [f"token_id:{nxt}"], "token_logprobs": [float(logp[nxt])],
                                             "top_logprobs": [tops]}})
            elif body.get("logprobs") is not None and not body.get("echo"):  # a server without the field
                with torch.no_grad():
                    logp = torch.log_softmax(lm(torch.tensor([ids])).logits[0, -1].float(), -1)
                nxt = int(logp.argmax())
                choices.append({"index": i, "text": self.tok.decode([nxt]),
                                "logprobs": {"top_logprobs": [{self.tok.decode([nxt]): float(logp[nxt])}]}})
            elif body.get("echo"):
                echoed, nxt, lp = self._token_logprobs(lm, ids)
                choices.append({"index": i, "text": self.tok.decode([nxt]),
                                "logprobs": {"token_logprobs": echoed + [lp]}})
            else:
                out = lm.generate(torch.tensor([ids]), max_new_tokens=body["max_tokens"], do_sample=False,
                                          pad_token_id=self.tok.pad_token_id)
                choices.append({"index": i, "text": self.tok.decode(out[0, len(ids):], skip_special_tokens=True)})
        return httpx.Response(200, json={"choices": choices[::-1]})  # out of order on purpose


@pytest.fixture(scope="module")
def tiny():
    from icl_toolkit.backends.testing import tiny_llama

    return tiny_llama(seed=0)


@pytest.fixture()
def client(tiny, tiny_model_dir):
    from icl_toolkit.backends.openai_api import OpenAIBackend

    server = ReferenceServer(*tiny)
    backend = OpenAIBackend(str(tiny_model_dir), url="http://model.test/v1", batch_size=3, progress=False,
                            transport=httpx.MockTransport(server))
    return backend, server


PROMPTS = ["Question: will this patient develop dementia?\nAnswer:", "History: 2015 hypertension\nAnswer:",
           "A longer prompt about falls, depression and hearing loss.\nAnswer:"]


def test_one_token_choices_are_scored_in_one_pass_per_prompt(client, tiny_backend_obj):
    backend, server = client
    got = np.array(backend.score(PROMPTS, [" Yes", " No"]))
    ref = np.array(tiny_backend_obj.score(PROMPTS, [" Yes", " No"]))
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # each prompt once, as token ids, asking for the choice tokens' log-probs at the next position: no echo
    (body,) = server.requests
    yes, no = (backend.encode(c)[0] for c in (" Yes", " No"))
    assert body["prompt"] == [backend.encode(p) for p in PROMPTS] and body["max_tokens"] == 1
    assert sorted(body["logprob_token_ids"]) == sorted({yes, no}) and body["logprobs"] == 1 and "echo" not in body
    assert body["return_tokens_as_token_ids"] is True and backend.next_token_scoring is True


def test_multi_token_choices_are_scored_from_echoed_logprobs(client, tiny_backend_obj):
    backend, server = client
    multi = backend.score(PROMPTS[0], [" Yes, within five years", " No"])
    np.testing.assert_allclose(multi, tiny_backend_obj.score(PROMPTS[0], [" Yes, within five years", " No"]),
                               atol=1e-4)
    # two sequences (prompt + each choice), sent with echo: the sum over each choice's tokens
    (body,) = server.requests
    assert len(body["prompt"]) == 2 and body["echo"] is True and body["logprobs"] == 0 and body["model"] == SERVED
    assert body["prompt"][0][: len(backend.encode(PROMPTS[0]))] == backend.encode(PROMPTS[0])


@pytest.mark.parametrize("broken", ["legacy", "reject"])
def test_servers_without_the_field_fall_back_to_echo_once(tiny, tiny_model_dir, tiny_backend_obj, broken, caplog):
    from icl_toolkit.backends.openai_api import OpenAIBackend

    server = ReferenceServer(*tiny, broken=broken)
    backend = OpenAIBackend(str(tiny_model_dir), url="http://m/v1", batch_size=3, progress=False,
                            transport=httpx.MockTransport(server))
    with caplog.at_level("WARNING", logger="icl.backends"):
        got = np.array(backend.score(PROMPTS, [" Yes", " No"]))
        again = np.array(backend.score(PROMPTS, [" Yes", " No"]))
    ref = np.array(tiny_backend_obj.score(PROMPTS, [" Yes", " No"]))
    np.testing.assert_allclose(got, ref, atol=1e-4)
    np.testing.assert_allclose(again, ref, atol=1e-4)
    assert backend.next_token_scoring is False
    assert sum("does not answer `logprob_token_ids`" in r.getMessage() for r in caplog.records) == 1  # said once
    tried = [b for b in server.requests if "logprob_token_ids" in b]
    assert len(tried) == 1 and all(b["echo"] for b in server.requests if b not in tried)


def test_generation_matches_greedy_transformers_and_is_cut_at_stop(client, tiny_backend_obj):
    backend, _ = client
    params = GenerationParams(max_new_tokens=8, stop=("\n",))
    assert backend.generate(PROMPTS, params) == tiny_backend_obj.generate(PROMPTS, params)
    assert isinstance(backend.generate(PROMPTS[0], params), str)


def test_api_key_from_the_environment(tiny, tiny_model_dir, monkeypatch):
    from icl_toolkit.backends.openai_api import OpenAIBackend

    server = ReferenceServer(*tiny, key="s3cret")
    monkeypatch.delenv("ICL_OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="401.*ICL_OPENAI_API_KEY"):
        OpenAIBackend(str(tiny_model_dir), url="http://model.test/v1", transport=httpx.MockTransport(server))
    monkeypatch.setenv("ICL_OPENAI_API_KEY", "s3cret")
    backend = OpenAIBackend(str(tiny_model_dir), url="http://model.test/v1", transport=httpx.MockTransport(server))
    assert backend.served_model == SERVED and backend.max_context == 4096


def test_server_problems_are_one_line_errors(tiny, tiny_model_dir):
    from icl_toolkit.backends.openai_api import OpenAIBackend

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match=f"Cannot reach the model server at http://127.0.0.1:{port}/v1"):
        OpenAIBackend(str(tiny_model_dir), url=f"http://127.0.0.1:{port}/v1", timeout=5)

    two = ReferenceServer(*tiny, models=("a", "b"))
    with pytest.raises(ConfigError, match="serves 2 models .*--served-model"):
        OpenAIBackend(str(tiny_model_dir), url="http://m/v1", transport=httpx.MockTransport(two))
    with pytest.raises(ConfigError, match="does not serve 'c'"):
        OpenAIBackend(str(tiny_model_dir), url="http://m/v1", served_model="c", transport=httpx.MockTransport(two))

    for broken, message in (("count", "returned 0 completions for 1 prompts"), ("no-echo", "did not echo")):
        server = ReferenceServer(*tiny, broken=broken)
        backend = OpenAIBackend(str(tiny_model_dir), url="http://m/v1", transport=httpx.MockTransport(server),
                                progress=False)
        with pytest.raises(ConfigError, match=message):
            backend.score(PROMPTS[0], [" Yes", " No"])
    lora = OpenAIBackend(str(tiny_model_dir), url="http://m/v1", progress=False,
                         transport=httpx.MockTransport(ReferenceServer(*tiny, broken="echo-500")))
    lora.score(PROMPTS[0], [" Yes", " No"])  # one-token choices: one pass, no prompt log-probs, fine
    with pytest.raises(ConfigError, match=r"answered 500.*--enable-lora fails on them.*one-token answer choices"):
        lora.score(PROMPTS[0], [" Yes, within five years", " No"])


def test_engine_options_reach_the_openai_backend_and_predict_runs_on_it(tiny, tiny_model_dir, small_cohort,
                                                                         hash_embedder):
    from icl_toolkit.backends.openai_api import OpenAIBackend
    from icl_toolkit.backends.options import EngineOptions, backend_kwargs, open_backend
    from icl_toolkit.inference.config import PredictConfig
    from icl_toolkit.inference.predictor import Predictor
    from icl_toolkit.prompting.config import PromptConfig
    from icl_toolkit.retrieval.config import RetrievalConfig

    with pytest.raises(ConfigError, match="needs the server's URL"):
        open_backend(str(tiny_model_dir), EngineOptions(backend="openai"))
    kw = backend_kwargs("openai", EngineOptions(backend="openai", url="http://m/v1", batch_size=4))
    backend = OpenAIBackend(str(tiny_model_dir), **kw, progress=False,
                            transport=httpx.MockTransport(ReferenceServer(*tiny)))
    cfg = PredictConfig(retrieval=RetrievalConfig(k=1), prompt=PromptConfig(demos="label", query_tokens=120,
                                                                            demo_tokens=100))
    remote = Predictor(backend, cfg, embedder=hash_embedder, progress=False).fit(small_cohort[:60])
    from icl_toolkit.backends.hf import HFBackend

    local = Predictor(HFBackend.from_objects(*tiny, model_id=backend.model_id), cfg, embedder=hash_embedder,
                      progress=False).fit(small_cohort[:60])
    a = remote.predict_proba(small_cohort[60:64])
    b = local.predict_proba(small_cohort[60:64])
    assert [r.prompt_hash for r in a] == [r.prompt_hash for r in b]
    np.testing.assert_allclose([r.probability for r in a], [r.probability for r in b], atol=1e-5)


@pytest.fixture(scope="module")
def tiny_adapter(small_cohort, tiny_model_dir, tmp_path_factory):
    """A LoRA adapter of the tiny model from icl finetune --lora, and the model with it merged (as the server runs
    it)."""
    from icl_toolkit.core.models import load_lm
    from icl_toolkit.training.config import FinetuneConfig
    from icl_toolkit.training.sft import Finetuner

    cfg = FinetuneConfig(target="label", lora=True, lora_r=4, max_steps=3, batch_size=4, lr=5e-2, query_tokens=120,
                         dtype="float32", seed=0)
    folder = tmp_path_factory.mktemp("adapters") / "label-sft"
    Finetuner(cfg, base=str(tiny_model_dir), progress=False).fit(small_cohort[:12], folder)
    return folder, load_lm(str(folder), dtype="float32")[0]


def test_adapters_served_by_one_server_are_chosen_per_request_by_name(tiny, tiny_model_dir, tiny_adapter):
    from icl_toolkit.backends.hf import HFBackend
    from icl_toolkit.backends.openai_api import OpenAIBackend
    from icl_toolkit.core.models import checkpoint_id

    folder, merged = tiny_adapter
    server = ReferenceServer(*tiny, adapters={"label": (merged, folder)})
    # --model is the adapter's folder: the server's adapter loaded from it is chosen, no --served-model needed
    sft = OpenAIBackend(str(folder), url="http://m/v1", progress=False, transport=httpx.MockTransport(server))
    base = OpenAIBackend(str(tiny_model_dir), url="http://m/v1", progress=False, transport=httpx.MockTransport(server))
    assert (sft.served_model, sft.adapter_of, sft.max_context) == ("label", SERVED, 4096)  # length from its base
    assert (base.served_model, base.adapter_of) == (SERVED, None)  # the only base model beside the adapter
    assert sft.model_id == checkpoint_id(folder) != base.model_id
    got, ref = np.array(sft.score(PROMPTS, [" Yes", " No"])), np.array(
        HFBackend(str(folder), batch_size=1, progress=False).score(PROMPTS, [" Yes", " No"]))
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert server.requests[-1]["model"] == "label"
    assert np.abs(np.array(base.score(PROMPTS, [" Yes", " No"])) - got).max() > 1e-3  # the adapter changed them


def test_an_adapter_in_a_container_is_matched_by_name_and_mismatches_are_refused(tiny, tiny_model_dir, tiny_adapter):
    from icl_toolkit.backends.openai_api import OpenAIBackend

    folder, merged = tiny_adapter
    # the server sees the adapter under another path (a volume in a container): its name is the folder's
    elsewhere = ReferenceServer(*tiny, adapters={folder.name: (merged, "/models/adapters/label")})
    backend = OpenAIBackend(str(folder), url="http://m/v1", transport=httpx.MockTransport(elsewhere))
    assert backend.served_model == folder.name
    other = ReferenceServer(*tiny, adapters={"rationale": (merged, "/models/adapters/rationale")})
    with pytest.raises(ConfigError, match=r"serves no adapter loaded from .*--lora-modules label-sft="):
        OpenAIBackend(str(folder), url="http://m/v1", transport=httpx.MockTransport(other))
    with pytest.raises(ConfigError, match="'rationale' is a LoRA adapter of 'tiny'.*give its folder as --model"):
        OpenAIBackend(str(tiny_model_dir), url="http://m/v1", served_model="rationale",
                      transport=httpx.MockTransport(other))
    with pytest.raises(ConfigError, match="is a LoRA adapter, but the server's 'tiny' is a base model"):
        OpenAIBackend(str(folder), url="http://m/v1", served_model=SERVED, transport=httpx.MockTransport(other))


def test_compare_checkpoints_open_their_served_adapters_through_the_engine_options(tiny, tiny_model_dir,
                                                                                   tiny_adapter, monkeypatch):
    """What icl compare's default backend factory calls for each [checkpoints] entry with [engine] backend =
    "openai": the base checkpoint gets the server's base model, the adapter folder its served adapter."""
    from icl_toolkit.backends import openai_api
    from icl_toolkit.backends.options import EngineOptions, open_backend

    folder, merged = tiny_adapter
    server = ReferenceServer(*tiny, adapters={"label": (merged, folder)})
    real = httpx.Client
    monkeypatch.setattr(openai_api.httpx, "Client",  # the backend's own client, answered by the reference server
                        lambda *a, transport=None, **kw: real(*a, transport=httpx.MockTransport(server), **kw))
    engine = EngineOptions(backend="openai", url="http://m/v1")
    opened = {name: open_backend(model, engine, progress=False)
              for name, model in {"base": str(tiny_model_dir), "label_sft": str(folder)}.items()}
    assert {k: b.served_model for k, b in opened.items()} == {"base": SERVED, "label_sft": "label"}
