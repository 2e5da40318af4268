"""Every bad or odd input a clear one-line error, and nothing lost (issue 15: one test per defect found).

The CLI runs here through its real entry point (``icl_toolkit.cli.main``), which is what turns errors into
messages, so "no traceback" is checked on what a user sees.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from icl_toolkit.core.errors import ConfigError, IclError
from icl_toolkit.data.cohort import write_cohort


@pytest.fixture()
def icl(capsys):
    """Run ``icl ARGS`` through the console script's entry point: (exit code, everything printed)."""
    from icl_toolkit.cli import main

    def run(*args) -> tuple[int, str]:
        old = sys.argv
        sys.argv = ["icl", *(str(a) for a in args)]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.argv = old
        out = capsys.readouterr()
        text = out.out + out.err
        assert "Traceback" not in text, text
        return code, text

    return run


@pytest.fixture(scope="module")
def files(small_cohort, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad-inputs")
    write_cohort(small_cohort[:40], d / "pool.jsonl")
    write_cohort(small_cohort[200:206], d / "test.jsonl")
    return d


def _predict(files, model, out, *extra):
    return ("predict", "--cohort", files / "test.jsonl", "--pool", files / "pool.jsonl", "--model", model,
            "--k", "2", "--demos", "label", "--demo-tokens", "100", "--query-tokens", "120", "--out", out, *extra)


# --------------------------------------------------------------------------- tracebacks found by the corpus

def test_cohort_line_nested_past_the_recursion_limit(tmp_path, icl):
    bad = tmp_path / "deep.jsonl"
    bad.write_text('{"a":' * 50_000 + "1" + "}" * 50_000 + "\n")
    code, text = icl("data", "validate", bad)
    assert code == 1 and f"{bad}:1" in text and "nested too deeply" in text


def test_damaged_faiss_index_and_index_json(files, tmp_path, icl, tiny_model_dir):
    idx = tmp_path / "idx"
    assert icl("index", "build", "--pool", files / "pool.jsonl", "--out", idx)[0] == 0
    faiss_file = idx / "index.faiss"
    good = faiss_file.read_bytes()
    faiss_file.write_bytes(good[: len(good) // 2])  # truncated
    code, text = icl(*_predict(files, tiny_model_dir, tmp_path / "p.jsonl", "--index", idx))
    assert code == 1 and "index.faiss: not a readable faiss index" in text and "icl index build" in text
    faiss_file.write_bytes(b"\x00garbage" * 10)  # corrupt
    code, text = icl("index", "info", idx)
    assert code == 1 and "not a readable faiss index" in text
    faiss_file.write_bytes(good)
    meta = idx / "index.json"
    meta.write_text("[1, 2, 3]")  # a list, not the metadata object
    code, text = icl("index", "info", idx)
    assert code == 1 and "index.json: not a demo index metadata record" in text
    meta.write_bytes(b'{"meta": "\xff\xfe"}')  # not UTF-8
    code, text = icl(*_predict(files, tiny_model_dir, tmp_path / "p.jsonl", "--index", idx))
    assert code == 1 and "index.json: not a valid demo index metadata (not UTF-8" in text


def test_retrieval_cache_with_malformed_entries_or_foreign_ids(files, tmp_path, icl, tiny_model_dir):
    cache = tmp_path / "ret.json"
    assert icl(*_predict(files, tiny_model_dir, tmp_path / "a.jsonl", "--retrieval", cache))[0] == 0
    record = json.loads(cache.read_text())
    qid = next(iter(record["queries"]))
    first = record["queries"][qid][0]
    record["queries"][qid][0] = ["NOT-IN-POOL", first[1], first[2], first[3]]
    cache.write_text(json.dumps(record))
    code, text = icl(*_predict(files, tiny_model_dir, tmp_path / "b.jsonl", "--retrieval", cache))
    assert code == 1 and "'NOT-IN-POOL'" in text and "is not in the pool" in text
    assert not (tmp_path / "b.jsonl").exists()  # nothing was written
    record["queries"][qid] = [["x", "high", 1]]  # malformed entry
    cache.write_text(json.dumps(record))
    code, text = icl(*_predict(files, tiny_model_dir, tmp_path / "b.jsonl", "--retrieval", cache))
    assert code == 1 and f"queries.{qid}: expected a list of [pool id, score" in text
    cache.write_text("[]")
    code, text = icl(*_predict(files, tiny_model_dir, tmp_path / "b.jsonl", "--retrieval", cache))
    assert code == 1 and "not a retrieval cache" in text


@pytest.mark.parametrize("body, message", [
    ('[prompt]\nquery_tokenz = 100\n[[arm]]\n', r"\[prompt\].query_tokenz: unknown key; did you mean 'query_tokens'"),
    ('[retrieval]\nmmr_lamda = 0.5\n[[arm]]\n', r"\[retrieval\].mmr_lamda: unknown key; did you mean 'mmr_lambda'"),
    ('[prompt]\ndemo_tokens = 10\n[[arm]]\n', r"\[prompt\].demo_tokens: Input should be greater than or equal to 90"),
    ('[prompt]\ndemos = "label"\n[[arm]]\n', r"set demos per \[\[arm\]\], not in \[prompt\]"),
])
def test_arms_toml_shared_tables_are_validated_when_loaded(files, tmp_path, icl, body, message):
    import re

    config = tmp_path / "arms.toml"
    config.write_text(body)
    out = tmp_path / "results"
    code, text = icl("compare", "--config", config, "--test", files / "test.jsonl", "--pool", files / "pool.jsonl",
                     "--out", out)
    assert code == 1 and re.search(message, text), text
    assert not out.exists()  # refused before any index or model was built


def test_arms_toml_not_utf8(files, tmp_path, icl):
    config = tmp_path / "arms.toml"
    config.write_bytes(b'[[arm]]\nname = "\xff"\n')
    code, text = icl("compare", "--config", config, "--test", files / "test.jsonl", "--pool", files / "pool.jsonl",
                     "--out", tmp_path / "r")
    assert code == 1 and "not UTF-8" in text


def test_temporal_guard_with_an_index_date_near_the_end_of_the_calendar(small_cohort, tmp_path, icl, tiny_model_dir):
    late = [dataclasses.replace(p, index_date=dt.date(9999, 6, 1), outcome_date=None if p.label == 0 else
                                dt.date(9999, 12, 1)) for p in small_cohort[:30]]
    write_cohort(late, tmp_path / "pool.jsonl")
    write_cohort(small_cohort[200:203], tmp_path / "test.jsonl")
    out = tmp_path / "p.jsonl"
    code, text = icl(*_predict(tmp_path, tiny_model_dir, out, "--temporal-guard"))
    assert code == 0, text
    # every pool outcome window ends after the queries' index dates (the last one at the calendar's end): no demos
    assert all(json.loads(line)["demos"] == [] for line in out.read_text().splitlines())
    from icl_toolkit.retrieval.retriever import _window_end

    assert _window_end(dt.date(9999, 6, 1), 5.0) == dt.date.max


def test_out_equal_to_cohort_is_refused_and_the_cohort_kept(files, tmp_path, icl, tiny_model_dir):
    cohort = tmp_path / "c.jsonl"
    cohort.write_bytes((files / "test.jsonl").read_bytes())
    before = cohort.read_bytes()
    for flags in ((), ("--resume",), ("--overwrite",)):
        code, text = icl("predict", "--cohort", cohort, "--pool", files / "pool.jsonl", "--model", tiny_model_dir,
                         "--out", cohort, *flags)
        assert code == 1 and "is both --cohort and the predictions output" in text
    assert cohort.read_bytes() == before


def test_serve_with_an_unknown_log_level(icl):
    code, text = icl("serve", "--log-level", "loud")
    assert code == 2 and "'loud' is not one of" in text


# --------------------------------------------------------------------------- data lost

def test_overwrite_that_fails_keeps_the_old_predictions(files, tmp_path, icl, tiny_model_dir):
    out = tmp_path / "p.jsonl"
    assert icl(*_predict(files, tiny_model_dir, out))[0] == 0
    old, old_meta = out.read_bytes(), (out.parent / "p.jsonl.meta.json").read_bytes()
    # a prompt that cannot fit: the query alone needs more than the context
    code, text = icl(*_predict(files, tiny_model_dir, out, "--overwrite", "--max-context", "300",
                               "--query-tokens", "400"))
    assert code == 1 and "without any demonstration" in text
    assert out.read_bytes() == old and (out.parent / "p.jsonl.meta.json").read_bytes() == old_meta
    assert not list(tmp_path.glob(".p.jsonl*"))  # no temporary file left behind
    # a successful overwrite replaces it
    assert icl(*_predict(files, tiny_model_dir, out, "--overwrite", "--k", "1"))[0] == 0
    assert all(len(json.loads(line)["demos"]) == 1 for line in out.read_text().splitlines())


def test_resume_without_the_settings_sidecar_is_refused(files, tmp_path, icl, tiny_model_dir):
    out = tmp_path / "p.jsonl"
    assert icl(*_predict(files, tiny_model_dir, out, "--limit", "3"))[0] == 0
    (tmp_path / "p.jsonl.meta.json").unlink()
    before = out.read_bytes()
    code, text = icl(*_predict(files, tiny_model_dir, out, "--resume", "--k", "3"))
    assert code == 1 and "cannot resume" in text and "p.jsonl.meta.json is missing" in text and "--overwrite" in text
    assert out.read_bytes() == before


def test_overwritten_outputs_keep_their_file_mode(files, tmp_path, icl, tiny_model_dir):
    out = tmp_path / "p.jsonl"
    assert icl(*_predict(files, tiny_model_dir, out, "--limit", "2"))[0] == 0
    os.chmod(out, 0o640)
    assert icl(*_predict(files, tiny_model_dir, out, "--limit", "2", "--overwrite", "--k", "1"))[0] == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    cohort = tmp_path / "c.jsonl"
    assert icl("data", "synth", "--n", "20", "--out", cohort)[0] == 0
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(cohort.stat().st_mode) == 0o666 & ~umask  # a new file: as open() makes it, not 0600
    os.chmod(cohort, 0o604)
    assert icl("data", "synth", "--n", "20", "--out", cohort)[0] == 0
    assert stat.S_IMODE(cohort.stat().st_mode) == 0o604


def test_full_disk_and_read_only_targets_name_the_path_and_the_fix(files, tmp_path, icl, tiny_model_dir,
                                                                    monkeypatch):
    import builtins

    real_open = builtins.open
    target = tmp_path / "p.jsonl"

    def full_disk(file, mode="r", *args, **kwargs):
        if "a" in str(mode) and Path(file).name.startswith(".p.jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full_disk)
    code, text = icl(*_predict(files, tiny_model_dir, target))
    assert code == 1 and str(target) in text and "no space left on the device" in text and "another disk" in text
    assert not target.exists()
    monkeypatch.setattr(builtins, "open", real_open)

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    code, text = icl("data", "synth", "--n", "10", "--out", tmp_path / "ro" / "c.jsonl")
    assert code == 1 and str(tmp_path / "ro") in text and "read-only" in text and "another folder" in text


def test_an_unexpected_error_is_one_line_naming_the_command(tmp_path, icl, monkeypatch):
    import icl_toolkit.cli.data as data

    def boom(*args, **kwargs):
        raise RuntimeError("something inside broke")

    monkeypatch.setattr(data, "describe_cohort", boom)
    cohort = tmp_path / "c.jsonl"
    assert icl("data", "synth", "--n", "10", "--out", cohort)[0] == 0
    code, text = icl("data", "stats", cohort, "--no-tokens")
    assert code == 2 and "icl data stats stopped on an internal error (RuntimeError: something inside broke)" in text
    assert "please report it" in text and "ICL_DEBUG=1" in text


def test_library_errors_derive_from_the_toolkit_error():
    from icl_toolkit.evaluation.compare.stats import Entry, evaluate
    from icl_toolkit.evaluation.metrics import bootstrap_ci, summary

    with pytest.raises(IclError):
        summary([0, 1], [0.5])
    with pytest.raises(IclError):
        bootstrap_ci([0, 1, 1], [0.1, 0.2, 0.3], n_resamples=0)
    with pytest.raises(IclError):
        evaluate([Entry("a", "arm", [0.1], None, {})], [], None, reference="a")
    assert issubclass(ConfigError, IclError)


@pytest.mark.parametrize("extra, message", [
    (("--device", "nonsense"), "--device: 'nonsense' is not a torch device"),
    (("--device", "cuda:7"), "--device cuda:7: "),
    (("--template", "pool.jsonl"), "a template file is a Jinja file ending in .j2"),
])
def test_device_and_template_mistakes_found_by_a_second_corpus(files, tmp_path, icl, tiny_model_dir, extra,
                                                               message, monkeypatch):
    monkeypatch.chdir(files)
    code, text = icl(*_predict(files, tiny_model_dir, tmp_path / "p.jsonl", *extra))
    assert code == 1 and message in text
    assert not (tmp_path / "p.jsonl").exists()


def test_a_file_where_a_folder_is_needed(small_cohort, tmp_path, icl):
    write_cohort(small_cohort[:20], tmp_path / "c.jsonl")
    code, text = icl("data", "split", tmp_path / "c.jsonl", "--out-dir", tmp_path / "c.jsonl")
    assert code == 1 and "a file is in the way where a folder is needed" in text
