"""The documentation cannot drift from the code: the README stays a front page, and the getting-started page's
commands run as written (on the tiny random model and a small cohort where the real ones would take minutes)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GETTING_STARTED = ROOT / "docs" / "getting-started.md"
ICL = Path(sys.executable).parent / "icl"


def _blocks(text: str, marker: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block that follows a ``<!-- marker -->`` line."""
    pattern = rf"<!-- {re.escape(marker)} -->\n+```(\w+)\n(.*?)```"
    return re.findall(pattern, text, re.S)


def _commands(block: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", "", block)
    out = []
    for line in joined.splitlines():
        line = line.split("  #", 1)[0].strip()
        if line and not line.startswith("#"):
            out.append(re.sub(r"\s+", " ", line))
    return out


def test_the_readme_is_a_front_page() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    assert not re.search(r"\bissues? \d+", text, re.I), "history belongs in CHANGELOG.md"
    two = text.split("## Two commands", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    assert _commands(two) == ["make demo", "make test"]
    cli = text.split("## The command line", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    assert len(_commands(cli)) == 6 and all(c.startswith("icl ") for c in _commands(cli))
    for target in re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)\)", text):
        assert (ROOT / target).is_file(), f"README links to {target}, which does not exist"
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## 0.1.0" in changelog and "**Issue 16," in changelog


def test_the_demo_block_is_what_make_demo_runs() -> None:
    """The page lists make demo's commands; they must be the Makefile's, so the page and the demo cannot part."""
    page = GETTING_STARTED.read_text(encoding="utf-8")
    (_, shown), = _blocks(page, "demo-commands")
    made = subprocess.run(["make", "-n", "demo", "DEMO_DIR=demo_out", "DEMO_N=100", "STAMP=Makefile"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    icl_lines = [c for c in _commands(made.stdout) if c.startswith(".venv/bin/icl ")]
    assert _commands(shown) == icl_lines
    echoed = subprocess.run(["make", "-n", "demo", "STAMP=Makefile"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60).stdout
    assert "icl index eval" in echoed and "recipes/first_hour.toml" in echoed, "make demo names the next steps"
    assert (ROOT / "recipes" / "first_hour.toml").is_file()


def _small(command: str, tiny: Path, recipe: Path) -> str:
    """The page's command made small: 300 patients instead of 2,000, the tiny model, a recipe on 8 patients."""
    command = command.replace(".venv/bin/icl ", f"{ICL} ")
    command = command.replace("--n 2000", "--n 300").replace("--limit 100", "--limit 6")
    command = command.replace("--model default", f"--model {tiny}")
    return command.replace("recipes/first_hour.toml", str(recipe))


@pytest.mark.timeout(900)
def test_the_first_hour_runs_as_written(tmp_path: Path, tiny_model_dir: Path) -> None:
    page = GETTING_STARTED.read_text(encoding="utf-8")
    recipe = tomllib.loads((ROOT / "recipes" / "first_hour.toml").read_text(encoding="utf-8"))
    assert recipe["checkpoints"]["base"] == "default" and len(recipe["contrasts"]) == 2
    small = (ROOT / "recipes" / "first_hour.toml").read_text(encoding="utf-8")
    small = small.replace('base = "default"', f'base = "{tiny_model_dir}"')
    small = re.sub(r"(?m)^limit = \d+", "limit = 8", small)
    small = re.sub(r"(?m)^val_limit = \d+", "val_limit = 10", small)
    small = re.sub(r"(?m)^bootstrap = \d+", "bootstrap = 50", small)
    (tmp_path / "first_hour.toml").write_text(small, encoding="utf-8")

    blocks = _blocks(page, "demo-commands") + _blocks(page, "first-hour")
    assert [lang for lang, _ in blocks] == ["bash", "bash", "bash", "python"]
    for lang, body in blocks:
        if lang == "bash":
            for command in _commands(body):
                r = subprocess.run(_small(command, tiny_model_dir, tmp_path / "first_hour.toml"), shell=True,
                                   cwd=tmp_path, capture_output=True, text=True, timeout=600)
                assert r.returncode == 0, f"{command}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        else:
            code = body.replace('open_backend("default")', f'open_backend("{tiny_model_dir}")')
            r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                               timeout=600)
            assert r.returncode == 0, r.stderr[-3000:]
            assert r.stdout.strip(), "the snippet prints what it found"
    out = tmp_path / "demo_out"
    assert (out / "predictions.jsonl").read_text().count("\n") == 6
    report = (out / "compare" / "report.md").read_text(encoding="utf-8")
    for arm in ("base / none / score", "base / label k=4 similar / score", "base / rationale k=4 similar / score"):
        assert arm in report
    assert "contrast" in report.lower()
