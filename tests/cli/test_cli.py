from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from icl_toolkit.cli import app
from icl_toolkit.data.cohort import read_cohort

runner = CliRunner()


def test_synth_validate_stats_split(tmp_path: Path) -> None:
    out = tmp_path / "c.jsonl"
    r = runner.invoke(app, ["data", "synth", "--n", "300", "--seed", "1", "--out", str(out),
                            "--split", "train=0.7,val=0.1,test=0.2"])
    assert r.exit_code == 0, r.output
    assert "wrote 300 patients" in r.output and "oracle AUROC" in r.output
    r = runner.invoke(app, ["data", "validate", str(out)])
    assert r.exit_code == 0 and "300 patients, no problems" in r.output
    r = runner.invoke(app, ["data", "stats", str(out), "--json"])
    assert r.exit_code == 0, r.output
    stats = json.loads(r.stdout[r.stdout.index("{"):])
    assert stats["n"] == 300 and 0.0 < stats["prevalence"] < 0.4
    assert stats["oracle_auroc"] > 0.6 and stats["history_tokens"]["mean"] > 100
    assert stats["splits"]["train"]["n"] == 210
    assert stats["rationale_tokens"]["free_text"]["mean"] > 50
    r = runner.invoke(app, ["data", "split", str(out), "--out-dir", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    sizes = {name: len(read_cohort(tmp_path / "s" / f"{name}.jsonl")) for name in ("train", "val", "test")}
    assert sizes == {"train": 210, "val": 30, "test": 60}


def test_stats_table_without_tokens(tmp_path: Path) -> None:
    out = tmp_path / "c.jsonl"
    runner.invoke(app, ["data", "synth", "--n", "50", "--seed", "2", "--out", str(out)])
    png = tmp_path / "overview.png"
    r = runner.invoke(app, ["data", "stats", str(out), "--no-tokens", "--plot", str(png)])
    assert r.exit_code == 0 and "oracle AUROC" in r.output and "prevalence" in r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_bad_split_option_is_a_clean_error(tmp_path: Path) -> None:
    r = runner.invoke(app, ["data", "synth", "--n", "10", "--out", str(tmp_path / "c.jsonl"), "--split", "train=2"])
    assert r.exit_code != 0
    assert not (tmp_path / "c.jsonl").exists()


def _icl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("icl")
    cmd = [str(exe), *args] if exe.exists() else [sys.executable, "-c", "from icl_toolkit.cli import main; main()", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})


def test_malformed_file_gets_line_numbered_errors_no_traceback(tmp_path: Path) -> None:
    good = {"patient_id": "A", "sex": "F", "birth_date": "1940-01-01", "index_date": "2019-01-01", "events": []}
    lines = [json.dumps(good), "{oops", json.dumps({**good, "patient_id": "B", "sex": "x", "label": 3}),
             json.dumps(good)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    r = _icl("data", "validate", str(bad), cwd=tmp_path)
    assert r.returncode == 1
    err = r.stderr
    # the file's line, the JSON column, no "-:" placeholder and no second "line 1" from the JSON parser
    assert f"{bad}:2: expected one JSON object per line, found invalid JSON at column 2" in err
    assert ": -:" not in err and "line 1 column" not in err
    assert f"{bad}:3: sex: expected 'F', 'M' or 'U', found 'x'" in err
    assert f"{bad}:3: label: expected 0 or 1, found 3" in err
    assert f"{bad}:4: patient_id: expected a unique id, found 'A' already used on line 1" in err
    assert "Traceback" not in err + r.stdout
    # reading commands refuse the same file with the same messages
    r = _icl("data", "stats", str(bad), "--no-tokens", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr and f"{bad}:3: sex" in r.stderr
    assert f"Check a file with `icl data validate {bad}`" in " ".join(r.stderr.split())
    r = _icl("data", "validate", str(tmp_path / "missing.jsonl"), cwd=tmp_path)
    assert r.returncode == 1 and "file not found" in r.stderr and "Traceback" not in r.stderr


def test_progress_in_a_log_file_is_plain_lines(monkeypatch, capsys):
    """A job whose stderr is a file gets progress lines (not a bar drawn only at the end)."""
    from icl_toolkit.core import progress

    monkeypatch.setattr(progress, "LOG_EVERY", 0.0)
    monkeypatch.setattr(progress.stderr_console, "_force_terminal", False)
    with progress.progress_bar("scoring", 3) as advance:
        advance(1)
        advance(2, "loss 0.5")
    err = capsys.readouterr().err
    assert "scoring: 1/3 in" in err and "about" in err and "scoring loss 0.5: 3/3 in" in err
    assert err.count("3/3") == 1, err   # the closing line is not repeated when the last periodic one showed it
    with progress.progress_bar("writing", 2) as advance:
        pass
    assert capsys.readouterr().err.count("writing: 0/2 in") == 1   # work that never advanced still gets its line


def test_progress_time_left_counts_only_this_runs_rate(monkeypatch, capsys):
    """A resumed run (initial work already done) estimates the time left from its own pace, not from the
    steps done before the restart, which took no time in this run."""
    from icl_toolkit.core import progress

    clock = iter([0.0, 0.0, 60.0, 60.0, 60.0, 60.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(progress, "LOG_EVERY", 0.0)
    monkeypatch.setattr(progress.stderr_console, "_force_terminal", False)
    with progress.progress_bar("training", 200, initial=100) as advance:
        advance(10)           # 10 steps in this run's first minute: 90 left at 10/min
    err = capsys.readouterr().err
    assert "training: 110/200 in 1.0 min, about 9 min left" in err, err


def test_tables_in_a_log_or_pipe_are_150_columns_wide():
    """Off a terminal, Rich would assume 80 columns and squeeze wide tables; the CLI's stdout takes 150 there,
    and $COLUMNS when set."""
    probe = [sys.executable, "-c", "from icl_toolkit.cli._common import console; print(console.width)"]
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    piped = subprocess.run(probe, capture_output=True, text=True, env=env, check=True)
    told = subprocess.run(probe, capture_output=True, text=True, env=env | {"COLUMNS": "100"}, check=True)
    assert (piped.stdout.strip(), told.stdout.strip()) == ("150", "100")


def _commands():
    """Every command of the ``icl`` app with its callback: (name, click command)."""
    import typer.main

    from icl_toolkit.cli import app

    root = typer.main.get_command(app)
    stack = [("icl", root)]
    while stack:
        name, cmd = stack.pop()
        subs = getattr(cmd, "commands", None)
        if subs:
            stack += [(f"{name} {k}", v) for k, v in subs.items()]
        else:
            yield name, cmd


def test_every_config_flag_is_generated_from_its_field_with_the_field_default():
    """A flag of a config option comes from the pydantic field (name, default, help); a hand-written flag that
    restates a field of a config the command takes fails here, and so does a generated flag whose default drifts."""
    from pydantic import BaseModel

    from icl_toolkit.cli._flags import FlagGroup, flag_origins, help_text

    checked = 0
    for name, cmd in _commands():
        origins = flag_origins(cmd.callback)
        models = {m for m, _ in origins.values()}
        fields = {f for m in models for f, info in m.model_fields.items()      # options, not sections
                  if not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel))}
        for param in cmd.params:
            if param.name in origins:
                model, field = origins[param.name]
                want = FlagGroup(model).default(field)
                got = param.default
                assert got == want or (got is None and want is None), f"{name} --{param.name}: {got!r} != {want!r}"
                doc = help_text(model.model_fields[field].description)
                assert doc and doc.split(".")[0] in (param.help or ""), f"{name} --{param.name}: help not the field's"
                checked += 1
            else:
                assert param.name not in fields, f"{name} --{param.name} restates a config field by hand"
    assert checked > 80


def test_tuple_flags_are_comma_separated_and_a_bad_value_names_the_flag(tmp_path, invoke):
    code, text = invoke(["index", "build", "--pool", tmp_path / "p.jsonl", "--out", tmp_path / "i",
                         "--retriever", "hybrid", "--hybrid-weights", "0.5,x,0.2"])
    assert code == 1 and "--hybrid-weights" in text and "Traceback" not in text, text
    code, text = invoke(["predict", "--cohort", tmp_path / "c.jsonl", "--out", tmp_path / "o.jsonl",
                         "--demos", "none", "--query-tokens", "10"])
    assert code == 2 and "Invalid value for '--query-tokens'" in text and "90" in text, text


def test_validate_pool_checks_what_a_pool_needs(tmp_path, invoke, small_cohort):
    """icl data validate said "no problems" of a pool with no labels, which icl predict then refused."""
    import dataclasses

    from icl_toolkit.data.cohort import write_cohort

    unlabelled = [dataclasses.replace(p, label=None, outcome_date=None) for p in small_cohort[:20]]
    write_cohort(unlabelled, tmp_path / "u.jsonl")
    code, text = invoke(["data", "validate", tmp_path / "u.jsonl"])
    assert code == 0 and "no problems" in text                       # a valid cohort file ...
    code, text = invoke(["data", "validate", tmp_path / "u.jsonl", "--pool"])
    assert code == 1 and "not usable as a pool" in text and "have no label" in text, text   # ... but not a pool
    plain = [dataclasses.replace(p, rationales=None) for p in small_cohort[:20]]
    write_cohort(plain, tmp_path / "plain.jsonl")
    code, text = invoke(["data", "validate", tmp_path / "plain.jsonl", "--pool"])
    assert code == 1 and "no free_text rationale" in text
    code, text = invoke(["data", "validate", tmp_path / "plain.jsonl", "--pool", "--demos", "label"])
    assert code == 0 and "no problems" in text


def test_an_option_spelt_otherwise_gets_a_hint(tmp_path: Path) -> None:
    r = _icl("predict", "--cohort", "c.jsonl", "--out", "p.jsonl", "--shots", "4", cwd=tmp_path)
    assert r.returncode == 2 and "no option --shots: use --k" in r.stderr and "Traceback" not in r.stderr
