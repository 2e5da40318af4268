"""The backend contract against a running OpenAI-compatible server (``vllm serve``), over plain HTTP.

For teams that keep one inference server and several clients. Prompts are
encoded locally with the model's own tokenizer (the same rule as the other
backends) and sent as token ids to the completions endpoint, so the server
reads exactly the tokens the transformers backend would.

Scoring is exact, not read off a top-k list. When every choice of a prompt is one
distinct token (the usual yes/no), the prompt is sent once with ``max_tokens: 1,
logprobs: 1`` and ``logprob_token_ids`` set to the choices' tokens (vLLM's
completions field, 0.32 and later): the server returns those tokens'
log-probabilities at the next position, one pass over the prompt, with no prompt
log-probabilities (which vLLM computes without its prefix cache). Otherwise, or
on a server that does not answer that field, each (prompt, choice) pair is sent
as prompt + choice tokens with ``echo: true, logprobs: 0, max_tokens: 1``, and the
server returns the log-probability of every prompt token; the choice's
log-probability is the sum over its tokens (two full passes per prompt). The
first fallback is said once. Sequences go in batches (``batch_size`` per
request), which the server batches again.

The API key, when the server wants one (``vllm serve --api-key``), comes from
the environment: ``ICL_OPENAI_API_KEY``, else ``OPENAI_API_KEY``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import httpx

from icl_toolkit.backends import BaseBackend, GenerationParams, ScoringPlan, no_ngram_repeats
from icl_toolkit.core.errors import ConfigError
from icl_toolkit.core.progress import progress_bar

__all__ = ["OpenAIBackend"]

log = logging.getLogger("icl.backends")


class ServerAnswered(ConfigError):
    """The model server answered an HTTP error status (:attr:`status`)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class OpenAIBackend(BaseBackend):
    """A model served by an OpenAI-compatible completions API (vLLM's ``vllm serve``).

    Args:
        model: the local model the server runs (``"default"``, a checkpoint folder or a cached hub
            name): its tokenizer encodes prompts and its id goes into provenance records.
        url: base URL of the API, e.g. ``http://127.0.0.1:8000/v1``.
        served_model: the model's name on the server (default: the only model it serves).
        max_context: context limit (default: the server's ``max_model_len``).
        batch_size: sequences per HTTP request (default 32).
        timeout: seconds to wait for one request.
        api_key: bearer token (default: ``ICL_OPENAI_API_KEY`` or ``OPENAI_API_KEY`` from the environment).
        progress: show a progress bar over requests.
        transport: an ``httpx`` transport (tests).
    """

    engine_options = ("url", "served_model", "max_context", "batch_size")

    def __init__(
        self,
        model: str = "default",
        *,
        url: str | None = None,
        served_model: str | None = None,
        max_context: int | None = None,
        batch_size: int | None = None,
        timeout: float = 600.0,
        api_key: str | None = None,
        progress: bool = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        from icl_toolkit.core.models import lm_id, load_tokenizer

        if not url:
            raise ConfigError(
                "The openai backend needs the server's URL: --url http://HOST:PORT/v1 (start the "
                "server with: vllm serve MODEL)."
            )
        self.url = url.rstrip("/")
        key = api_key or os.environ.get("ICL_OPENAI_API_KEY") or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(base_url=self.url, timeout=timeout, headers=headers, transport=transport)
        self.tokenizer = load_tokenizer(model)
        self.model_id = lm_id(model)
        self.batch_size = max(int(batch_size or 32), 1)
        self.progress = progress
        served = self._request("GET", "/models").get("data")
        if not isinstance(served, list) or not served or not all(isinstance(m, dict) for m in served):
            raise ConfigError(f"The server at {self.url} lists no models at /models.")
        entry = self._choose(served, model, served_model)
        self.served_model = str(entry.get("id"))
        self.adapter_of = entry.get("parent")  # the base model's name on the server when this is a LoRA adapter
        base = next((m for m in served if m.get("id") == self.adapter_of), entry)
        self.max_context = int(max_context or entry.get("max_model_len") or base.get("max_model_len") or 2048)
        self.next_token_scoring: bool | None = None  # None: not tried yet; False: the server did not answer it

    def _choose(self, served: list[dict[str, Any]], model: str, served_model: str | None) -> dict[str, Any]:
        """The server's model entry for ``model``: the one named ``served_model``; else, for a LoRA adapter folder,
        the adapter the server loaded from that folder (``vllm serve --enable-lora --lora-modules NAME=PATH``, matched
        by path, else by the folder's name); else the only model, or the only base model beside adapters.

        Raises:
            ConfigError: no entry or several fit, or the entry is an adapter where ``model`` is not (or the
                reverse), which would put the wrong model in every record.
        """
        from icl_toolkit.core.models import is_adapter

        names = [str(m.get("id")) for m in served]
        listing = ", ".join(f"{n} (adapter of {m['parent']})" if m.get("parent") else n for n, m in zip(names, served))
        local = Path(model).expanduser()
        adapter = local.resolve() if model != "default" and local.is_dir() and is_adapter(local) else None
        if served_model is not None:
            if served_model not in names:
                raise ConfigError(f"The server at {self.url} does not serve {served_model!r}; it serves {listing}.")
            entry = served[names.index(served_model)]
        elif adapter is not None:
            fits = [m for m in served if m.get("parent") and _same_folder(m.get("root"), adapter)]
            fits = fits or [m for m in served if m.get("parent") and m.get("id") == adapter.name]
            if len(fits) != 1:
                raise ConfigError(
                    f"The server at {self.url} serves no adapter loaded from {adapter} (it serves {listing}). Start it "
                    f"with --enable-lora --lora-modules {adapter.name}={adapter}, or name the adapter with "
                    "--served-model."
                )
            entry = fits[0]
        else:
            bases = [m for m in served if not m.get("parent")]
            if len(served) > 1 and len(bases) != 1:
                raise ConfigError(
                    f"The server at {self.url} serves {len(served)} models ({listing}); choose one with --served-model."
                )
            entry = served[0] if len(served) == 1 else bases[0]
        name = entry.get("id")
        if adapter is not None and not entry.get("parent"):
            raise ConfigError(
                f"--model {model} is a LoRA adapter, but the server's {name!r} is a base model: the adapter would not "
                f"be applied. Serve it with --enable-lora --lora-modules {adapter.name}={adapter} and choose that name."
            )
        if adapter is None and entry.get("parent"):
            raise ConfigError(
                f"The server's {name!r} is a LoRA adapter of {entry['parent']!r}, but --model {model} is not that "
                f"adapter: give its folder as --model (the records name the model that answered), here "
                f"{entry.get('root') or 'the folder it was loaded from'}."
            )
        return entry

    # ------------------------------------------------------------------ HTTP

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            resp = self.client.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise ConfigError(
                f"Cannot reach the model server at {self.url}{path}: {exc}. Start it (vllm serve MODEL "
                "--port PORT) or check --url."
            ) from None
        if resp.status_code == 401:
            raise ConfigError(
                f"The model server at {self.url} refused the request (401): set ICL_OPENAI_API_KEY "
                "to the key it was started with."
            )
        if resp.status_code >= 400:
            raise ServerAnswered(
                f"The model server at {self.url}{path} answered {resp.status_code}: {resp.text[:400]}", resp.status_code
            )
        try:
            data = resp.json()
        except ValueError:
            raise ConfigError(
                f"The model server at {self.url}{path} answered with something other than JSON: {resp.text[:200]!r}"
            ) from None
        if not isinstance(data, dict):
            raise ConfigError(f"The model server at {self.url}{path} answered with an unexpected shape: {data!r:.200}")
        return data

    def _complete(self, token_lists: list[list[int]], **fields: Any) -> list[dict[str, Any]]:
        """One completion choice per prompt, in prompt order, over as many requests as the batch size needs."""
        out: list[dict[str, Any]] = []
        steps = range(0, len(token_lists), self.batch_size)
        with progress_bar(f"requests to {self.url}", len(steps), self.progress and len(steps) > 1) as advance:
            for start in steps:
                chunk = token_lists[start : start + self.batch_size]
                data = self._request("POST", "/completions", {"model": self.served_model, "prompt": chunk, **fields})
                choices = data.get("choices")
                if not isinstance(choices, list) or len(choices) != len(chunk):
                    raise ConfigError(
                        f"The model server at {self.url} returned {len(choices or [])} completions for "
                        f"{len(chunk)} prompts."
                    )
                out += sorted(choices, key=lambda c: c.get("index", 0))
                advance(1)
        return out

    # ------------------------------------------------------------------ contract

    def _score(self, plan: ScoringPlan, n_choices: int) -> list[list[float]]:
        """Choice log-probs: next-token log-probs of the choice tokens where every choice is one token and the
        server answers ``logprob_token_ids``, else the server's echoed prompt log-probs."""
        out: list[list[float]] = [[0.0] * n_choices for _ in plan.ctxs]
        echo = list(range(len(plan.ctxs)))
        if plan.fast and self.next_token_scoring is not False:
            got = self._score_next_token(plan, plan.fast)
            if got is not None:
                for i, row in zip(plan.fast, got):
                    out[i] = row
                fast = set(plan.fast)
                echo = [i for i in echo if i not in fast]
        if echo:
            for i, row in zip(echo, self._score_echo(plan, echo)):
                out[i] = row
        return out

    def _score_next_token(self, plan: ScoringPlan, rows: list[int]) -> list[list[float]] | None:
        """The choice tokens' log-probs at the next position, one pass per prompt; None (and a note, once) when the
        server does not answer ``logprob_token_ids``."""
        wanted = sorted({cont[0] for i in rows for cont in plan.conts[i]})
        try:
            results = self._complete(
                [plan.ctxs[i] for i in rows],
                max_tokens=1,
                temperature=0.0,
                logprobs=1,
                logprob_token_ids=wanted,
                return_tokens_as_token_ids=True,
            )
        except ServerAnswered as exc:
            if exc.status != 400 or self.next_token_scoring:
                raise
            self._fall_back(f"it refused the field ({str(exc)[:160]})")
            return None
        out = []
        for i, res in zip(rows, results):
            tops = (res.get("logprobs") or {}).get("top_logprobs") or [None]
            first = tops[0] if isinstance(tops[0], dict) else {}
            row = [first.get(f"token_id:{cont[0]}") for cont in plan.conts[i]]
            if any(v is None for v in row):
                if self.next_token_scoring:
                    raise ConfigError(
                        f"The model server at {self.url} stopped returning the requested tokens' log-probabilities."
                    )
                self._fall_back("its answer does not carry the requested tokens' log-probabilities")
                return None
            out.append([float(v) for v in row if v is not None])
        self.next_token_scoring = True
        return out

    def _fall_back(self, why: str) -> None:
        self.next_token_scoring = False
        log.warning(
            "The model server at %s does not answer `logprob_token_ids` (%s): scoring each choice from echoed "
            "prompt log-probabilities instead, two full passes per prompt (vLLM 0.32 or later answers it).",
            self.url,
            why,
        )

    def _score_echo(self, plan: ScoringPlan, rows: list[int]) -> list[list[float]]:
        """Choice log-probs of ``rows`` from the server's echoed prompt log-probs."""
        seqs, where = [], []
        for k, i in enumerate(rows):
            ctx, conts = plan.ctxs[i], plan.conts[i]
            for j, cont in enumerate(conts):
                seqs.append(ctx + cont)
                where.append((k, j, len(ctx)))
        try:
            results = self._complete(seqs, max_tokens=1, temperature=0.0, echo=True, logprobs=0)
        except ServerAnswered as exc:
            if exc.status < 500:
                raise
            raise ServerAnswered(
                f"{exc} (scoring by echoed prompt log-probabilities, which multi-token answer choices or a server "
                "without `logprob_token_ids` need: a vLLM server started with --enable-lora fails on them, vLLM "
                "issues #16668 and #29955; use one-token answer choices, or a server without LoRA)",
                exc.status,
            ) from None
        out: list[list[float]] = [[0.0] * len(plan.conts[i]) for i in rows]
        for (i, j, start), seq, res in zip(where, seqs, results):
            lps = (res.get("logprobs") or {}).get("token_logprobs")
            if not isinstance(lps, list) or len(lps) < len(seq) or any(v is None for v in lps[start : len(seq)]):
                raise ConfigError(
                    f"The model server at {self.url} did not echo the prompt's log-probabilities "
                    "(needs a server that supports echo with logprobs, such as vllm serve)."
                )
            out[i][j] = float(sum(lps[start : len(seq)]))
        return out

    def _generate(self, ctxs: list[list[int]], params: GenerationParams) -> list[str]:
        no_ngram_repeats(params, "openai")
        extra = {"repetition_penalty": params.repetition_penalty} if params.repetition_penalty != 1.0 else {}
        results = self._complete(
            ctxs,
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p if params.temperature > 0 else 1.0,
            seed=params.seed,
            **({"stop": list(params.stop)} if params.stop else {}),
            **extra,
        )
        return [str(r.get("text", "")) for r in results]


def _same_folder(root: Any, folder: Path) -> bool:
    """Whether the server's ``root`` of an adapter is ``folder`` on this machine (a server in a container sees other
    paths; those match by name instead)."""
    if not isinstance(root, str) or not root:
        return False
    try:
        return Path(root).expanduser().resolve() == folder
    except OSError:
        return False
