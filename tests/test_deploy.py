"""The container files (deploy/), checked without a container engine (this kind of machine has the docker client
but no engine, so nothing is built or run here): every flag the images pass to `icl serve` is one of its options,
the build-time model conversion calls functions that exist, the CPU image runs as a non-root user with a health
check, and the compose set-up wires the monitor folder, /metrics and the vLLM server together."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import typer.main
import yaml

from icl_toolkit.cli import app
from icl_toolkit.core import models

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "deploy" / "Dockerfile").read_text()
COMPOSE = yaml.safe_load((ROOT / "deploy" / "compose.gpu.yaml").read_text())
PROMETHEUS = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())


def _serve_options() -> set[str]:
    serve = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    return {o for p in serve.params if p.param_type_name == "option" for o in [*p.opts, *p.secondary_opts]}


def _flags(args: list[str]) -> set[str]:
    return {a for a in args if a.startswith("--")}


def _json_list(instruction: str) -> list[str]:
    m = re.search(rf"^{instruction} (\[.*\])$", DOCKERFILE, re.M)
    assert m, instruction
    return yaml.safe_load(m.group(1))


def test_cpu_image_serves_as_a_non_root_user_with_a_health_check():
    entry, cmd = _json_list("ENTRYPOINT"), _json_list("CMD")
    assert entry[:2] == ["icl", "serve"]
    assert _flags(entry + cmd) <= _serve_options()
    final = DOCKERFILE.rsplit("\nFROM ", 1)[1]  # the runtime stage
    user = re.search(r"^USER (\S+)$", final, re.M)
    assert user and user.group(1) not in ("root", "0")
    assert "HEALTHCHECK" in final and "/health" in final
    assert "COPY --from=build" in final and "pip install" not in final  # small layers: nothing built at run time
    # the model is converted at build time by functions that exist
    assert "resolve_lm('default')" in DOCKERFILE and callable(models.resolve_lm) and callable(models.load_tokenizer)
    assert "torch==2.13.0" in DOCKERFILE and "whl/cpu" in DOCKERFILE  # no CUDA wheels in the CPU image
    ignored = (ROOT / ".dockerignore").read_text()
    for needed in ("pyproject.toml", "icl_toolkit/", "prompts/"):
        assert f"!{needed}" in ignored
        assert f"COPY {needed.rstrip('/')}" in DOCKERFILE or needed in DOCKERFILE


def test_compose_puts_icl_serve_in_front_of_vllm_with_monitoring_wired():
    services = COMPOSE["services"]
    icl, vllm = services["icl"], services["vllm"]
    args = icl["command"]
    assert _flags(args) <= _serve_options()
    opt = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--")}
    assert opt["--backend"] == "openai" and opt["--url"] == "http://vllm:8000/v1"
    assert opt["--served-model"] == vllm["command"][vllm["command"].index("--served-model-name") + 1]
    assert opt["--monitor-dir"].startswith("/data/") and "--metrics-auth" in args
    assert any(v.endswith(":/data") for v in icl["volumes"])
    assert icl["depends_on"]["vllm"]["condition"] == "service_healthy"
    assert vllm["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert vllm["image"].endswith(":v0.32.0")  # the vLLM release the gpu extra pins
    pins = (ROOT / "pyproject.toml").read_text()
    assert 'gpu = ["vllm>=0.32,<0.33"]' in pins
    # both servers' /metrics are scraped; icl's with the bearer token --metrics-auth asks for
    jobs = {j["job_name"]: j for j in PROMETHEUS["scrape_configs"]}
    assert jobs["icl"]["static_configs"][0]["targets"] == ["icl:8000"]
    assert jobs["vllm"]["static_configs"][0]["targets"] == ["vllm:8000"]
    key_file = jobs["icl"]["authorization"]["credentials_file"]
    assert any(v.split(":")[1] == key_file for v in services["prometheus"]["volumes"])
    # the model folder both servers read is the one model-init fills
    init = " ".join(services["model-init"]["entrypoint"])
    assert "/models/smollm2" in init and opt["--model"] == "/models/smollm2"
    assert shlex.split(" ".join(vllm["command"]))[1] == "/models/smollm2"
