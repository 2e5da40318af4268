"""The architecture stays as the README's layout says: layers whose imports point down, one spec, one run loop,
one strategy list, one option mapping, the vocabulary at the bottom (checks on the source, so a copy or an upward
import that creeps back in fails here)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "icl_toolkit"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("core",),
    ("data",),
    ("retrieval",),
    ("prompting",),
    ("backends",),
    ("inference",),
    ("rationales",),
    ("evaluation",),
    ("training",),
    ("serve",),
    ("cli",),
)
"""The package's layers from the bottom up; a module may import its own layer and those below, never above."""


def _sources() -> dict[str, str]:
    return {str(p.relative_to(PKG)): p.read_text(encoding="utf-8") for p in PKG.rglob("*.py")}


def _where(pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return sorted(name for name, text in _sources().items() if rx.search(text))


def _module(path: str) -> str:
    parts = Path(path).with_suffix("").parts
    return ".".join(("icl_toolkit", *(parts[:-1] if parts[-1] == "__init__" else parts)))


def _imports() -> dict[str, list[tuple[str, bool]]]:
    """Per module, the toolkit modules it imports and whether each import is inside a function."""
    known = {_module(p) for p in _sources()}
    out: dict[str, list[tuple[str, bool]]] = {}
    for path, text in _sources().items():
        me = _module(path)
        tree = ast.parse(text)
        inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f)}
        found = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("icl_toolkit"):
                assert node.level == 0, f"{path}: relative import"
                for alias in node.names:  # `from pkg import submodule` imports the submodule
                    sub = f"{node.module}.{alias.name}"
                    found.append((sub if sub in known else node.module, id(node) in inner))
            elif isinstance(node, ast.Import):
                found += [(a.name, id(node) in inner) for a in node.names if a.name.startswith("icl_toolkit")]
        out[me] = found
    return out


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return len(LAYERS)  # the package's face sits on top of everything
    return next(i for i, names in enumerate(LAYERS) if parts[1] in names)


def test_every_folder_is_a_layer_and_the_top_level_is_small():
    entries = sorted(p.name for p in PKG.iterdir() if p.name not in ("__init__.py", "py.typed", "__pycache__"))
    assert len(entries) <= 12, entries
    assert all((PKG / e).is_dir() for e in entries), "modules at the top level: " + ", ".join(entries)
    assert sorted(entries) == sorted(name for layer in LAYERS for name in layer)


def test_the_tests_mirror_the_package():
    tests = Path(__file__).resolve().parent
    folders = {p.name for p in tests.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}
    assert folders <= {name for layer in LAYERS for name in layer}, folders
    for folder in folders:
        assert any((tests / folder).glob("test_*.py")), folder


def test_imports_point_down_the_layers():
    upward = [f"{m} (layer {LAYERS[_layer(m)]}) imports {t} (layer {LAYERS[_layer(t)] if _layer(t) < len(LAYERS) else 'top'})"
              for m, targets in _imports().items() for t, _ in targets if _layer(t) > _layer(m)]
    assert not upward, "\n".join(upward)


def test_no_import_cycles_not_even_through_function_level_imports():
    graph = {m: {t for t, _ in ts if t != m} for m, ts in _imports().items()}
    # a package's __init__ re-exporting its own submodules is not an edge back: submodules import siblings directly
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(t):], t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_strategy_list_is_spelled_out_once():
    assert _where(r"""["']similar["'],\s*["']balanced["']""") == ["retrieval/config.py"]
    assert _where(r"""["']rationale["'],\s*["']label["'],\s*["']none["']""") == ["prompting/config.py"]
    assert _where(r"""["']dense["'],\s*["']sparse["'],\s*["']hybrid["']""") == ["retrieval/config.py"]


def test_one_run_loop_appends_records():
    assert _where(r"""open\([^)]*["']a["']""") == ["inference/output.py"]
    assert _where(r"def run_resumable\(") == ["inference/run.py"]
    # icl predict, icl rationales generate and icl compare's arms all go through it
    src = _sources()
    assert "predict_to_file(" in src["inference/run.py"].split("def predict_file(")[1]
    assert "run_resumable(" in src["rationales/teacher.py"].split("def generate_rationales_file(")[1]
    assert "predict_to_file(" in src["evaluation/compare/run.py"]
    # the commands only parse flags and print
    assert "predict_file(" in src["cli/predict.py"] and "generate_rationales_file(" in src["cli/rationales.py"]
    for command in ("cli/predict.py", "cli/rationales.py"):
        assert "read_cohort" not in src[command] and "open_backend" not in src[command], command


def test_the_spec_is_built_in_one_place():
    """Front ends build predictions' settings through PredictConfig.from_options, never section by section."""
    # (a library default, ``RetrievalConfig()``, is not a spec built section by section)
    assert _where(r"RetrievalConfig\((?!\))") == ["retrieval/cache.py", "retrieval/config.py"]
    assert _where(r"PromptConfig\((?!\))") == ["prompting/config.py"]
    for front_end in ("cli/_common.py", "evaluation/compare/config.py", "serve/service.py"):
        assert "from_options" in _sources()[front_end], front_end
    # "k = 0 means no demonstrations" is decided in the spec only
    assert _where(r"k\s*==\s*0") == ["inference/config.py", "retrieval/retriever.py"]


def test_backends_own_their_options():
    text = _sources()["backends/options.py"]
    assert 'if name == "hf"' not in text and "_ONLY" not in text
    for name in ("hf.py", "vllm.py", "openai_api.py"):
        assert "engine_options = (" in _sources()[f"backends/{name}"]


def test_the_vocabulary_sits_at_the_bottom():
    text = _sources()["data/vocabulary.py"]
    assert "icl_toolkit" not in re.sub(r'""".*?"""', "", text, flags=re.S).replace("icl_toolkit.data.vocabulary", "")
    for name in ("data/serialize.py", "rationales/grounding.py", "data/omop/build.py"):
        imports = [line for line in _sources()[name].splitlines(True) if line.startswith(("from", "import"))]
        assert "synth" not in "".join(imports)
