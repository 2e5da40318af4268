"""icl predict --engine ray on a local Ray instance: equality with the single-process path, failures recorded
without failing the run, resume after the driver is killed, a replica killed mid-run, the missing extra.

Each run starts Ray and its replicas (about half a minute on 2 cores), so these tests carry the ``ray`` marker:
outside the default ``pytest`` run, inside ``make test`` (a second pytest call) and ``make test-all``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from icl_toolkit.core.errors import IclError
from icl_toolkit.data.cohort import write_cohort

ICL = str(Path(sys.executable).with_name("icl"))


def _run(*args, **kw):
    return subprocess.run([ICL, *map(str, args)], capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def files(small_cohort, tmp_path_factory):
    d = tmp_path_factory.mktemp("ray")
    write_cohort(small_cohort[:60], d / "pool.jsonl")
    write_cohort(small_cohort[200:224], d / "test.jsonl")
    write_cohort(small_cohort[200:300], d / "long.jsonl")
    return d


def _records(folder: Path) -> list[dict]:
    from icl_toolkit.inference.output import read_sharded_records

    return read_sharded_records(folder)


def _common(files, model):
    return ["--pool", files / "pool.jsonl", "--model", model, "--k", 2, "--demos", "label", "--query-tokens", 200,
            "--demo-tokens", 120]


@pytest.mark.ray
def test_ray_equals_single_process_and_records_a_failing_patient(files, tiny_model_dir, tmp_path):
    lines = (files / "test.jsonl").read_text().splitlines()
    bad = json.loads(lines[3])
    bad["patient_id"], bad["sex"] = "BROKEN", "x"
    (tmp_path / "mixed.jsonl").write_text("\n".join(lines[:3] + [json.dumps(bad)] + lines[3:]) + "\n")
    r = _run("predict", "--cohort", tmp_path / "mixed.jsonl", *_common(files, tiny_model_dir), "--out",
             tmp_path / "ray", "--engine", "ray", "--replicas", 2, "--chunk-size", 4, "--shard-size", 5)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "25 predictions" in r.stdout and "1 failed" in r.stdout, r.stdout
    r = _run("predict", "--cohort", files / "test.jsonl", *_common(files, tiny_model_dir), "--out",
             tmp_path / "local.jsonl")
    assert r.returncode == 0, r.stderr[-2000:]
    ray_recs = {x["patient_id"]: x for x in _records(tmp_path / "ray")}
    local = {x["patient_id"]: x for x in map(json.loads, (tmp_path / "local.jsonl").read_text().splitlines())}
    assert ray_recs["BROKEN"]["error"].startswith("invalid record: sex: expected 'F', 'M' or 'U'")
    del ray_recs["BROKEN"]
    assert set(ray_recs) == set(local) and len(local) == 24
    for pid, want in local.items():
        got = ray_recs[pid]
        assert abs(got["probability"] - want["probability"]) <= 1e-5
        assert got["demos"] == want["demos"] and got["prompt_hash"] == want["prompt_hash"]
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert sum(s["records"] for s in manifest["shards"]) == 25 and len(manifest["shards"]) == 5


@pytest.mark.ray
def test_ray_equals_single_process_with_the_embedded_model(files, tmp_path):
    common = ["--cohort", files / "test.jsonl", "--pool", files / "pool.jsonl", "--k", 2, "--demos", "label",
              "--limit", 3, "--query-tokens", 200, "--demo-tokens", 120]
    r = _run("predict", *common, "--out", tmp_path / "ray", "--engine", "ray")
    assert r.returncode == 0, r.stderr[-2000:]
    r = _run("predict", *common, "--out", tmp_path / "local.jsonl")
    assert r.returncode == 0, r.stderr[-2000:]
    ray_recs = {x["patient_id"]: x for x in _records(tmp_path / "ray")}
    local = [json.loads(x) for x in (tmp_path / "local.jsonl").read_text().splitlines()]
    assert len(local) == 3 and set(ray_recs) == {x["patient_id"] for x in local}
    for want in local:
        got = ray_recs[want["patient_id"]]
        assert abs(got["probability"] - want["probability"]) <= 1e-5, (got["probability"], want["probability"])
        assert got["demos"] == want["demos"] and got["prompt_hash"] == want["prompt_hash"]


def _wait_for(cond, timeout=300.0, every=0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(every)
    return False


def _shards(folder: Path) -> int:
    try:
        return len(json.loads((folder / "manifest.json").read_text())["shards"])
    except (FileNotFoundError, ValueError):
        return 0


def _replicas() -> list[tuple[int, int]]:
    """(pid, parent pid) of every replica process on this machine."""
    out = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    return [(int(line.split()[0]), int(line.split()[1])) for line in out.splitlines() if "MapBatches(_Replica)" in line]


def _once(folder: Path, n: int) -> list[dict]:
    recs = _records(folder)
    ids = [x["patient_id"] for x in recs]
    assert len(ids) == len(set(ids)) == n and not any("error" in x for x in recs)
    return recs


@pytest.mark.ray
def test_resume_after_the_driver_is_killed_gives_every_patient_once(files, tiny_model_dir, tmp_path):
    args = ["predict", "--cohort", files / "long.jsonl", *_common(files, tiny_model_dir), "--out", tmp_path / "ray",
            "--engine", "ray", "--chunk-size", 1, "--shard-size", 1]
    proc = subprocess.Popen([ICL, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        assert _wait_for(lambda: _shards(tmp_path / "ray") >= 3, every=0.05), "no shard written"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = _shards(tmp_path / "ray")
    assert 0 < before < 100
    r = _run(*args)
    assert r.returncode == 1 and "--resume" in r.stderr
    r = _run(*args, "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming {tmp_path / 'ray'}: {before} done" in r.stderr
    _once(tmp_path / "ray", 100)


@pytest.mark.ray
def test_a_replica_killed_mid_run_is_restarted_and_its_batch_retried(files, tiny_model_dir, tmp_path):
    args = ["predict", "--cohort", files / "long.jsonl", *_common(files, tiny_model_dir), "--out", tmp_path / "ray",
            "--engine", "ray", "--chunk-size", 1, "--shard-size", 1]
    proc = subprocess.Popen([ICL, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert _wait_for(lambda: _shards(tmp_path / "ray") >= 1, every=0.05), "no shard written"
        replicas = _replicas()
        assert replicas
        os.kill(replicas[0][0], signal.SIGKILL)
        assert _shards(tmp_path / "ray") < 100          # killed while work was left for it
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-2000:]
    _once(tmp_path / "ray", 100)


@pytest.mark.ray
def test_a_worker_node_killed_mid_run_on_a_multi_node_cluster(files, tiny_model_dir, tmp_path):
    """Three Ray nodes on this machine (Ray's own test cluster: a head and two worker nodes, each its own raylet
    and object store); icl predict joins with --ray-address, two replicas; the node that holds a replica is killed
    mid-run. Ray restarts the replica on a surviving node and the run finishes, or, if Ray gives up, the run says
    to resume and --resume finishes it: either way every patient once."""
    import ray._private.ray_constants as ray_constants
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
        cluster.wait_for_nodes()
        args = ["predict", "--cohort", files / "long.jsonl", *_common(files, tiny_model_dir), "--out", tmp_path / "ray",
                "--engine", "ray", "--ray-address", cluster.address, "--replicas", 2, "--chunk-size", 1,
                "--shard-size", 1]
        proc = subprocess.Popen([ICL, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            _wait_for(lambda: _shards(tmp_path / "ray") >= 3 or proc.poll() is not None, every=0.05)
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            raylets = {n.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid: n for n in workers}
            hosts = [raylets[parent] for _, parent in _replicas() if parent in raylets]
            assert hosts, "no replica on a worker node"
            cluster.remove_node(hosts[0], allow_graceful=False)  # its raylet, object store and workers: gone
            assert _shards(tmp_path / "ray") < 100  # killed while work was left
            out, err = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode != 0:  # Ray gave up: the message says to resume, and resuming finishes the run
            assert "--resume" in err and "bug in icl-toolkit" not in err, err[-2000:]
            r = _run(*args, "--resume")
            assert r.returncode == 0, r.stderr[-2000:]
        print(f"\nworker node killed mid-run: {'finished' if proc.returncode == 0 else 'resumed'}")
        _once(tmp_path / "ray", 100)
    finally:
        cluster.shutdown()


@pytest.mark.ray
def test_when_ray_gives_up_the_run_keeps_its_records_and_says_to_resume(files, tiny_model_dir, tmp_path):
    args = ["predict", "--cohort", files / "long.jsonl", *_common(files, tiny_model_dir), "--out", tmp_path / "ray",
            "--engine", "ray", "--chunk-size", 1, "--shard-size", 1, "--max-restarts", 0]
    proc = subprocess.Popen([ICL, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _wait_for(lambda: _shards(tmp_path / "ray") >= 1 or proc.poll() is not None, every=0.05)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        replicas = _replicas()
        assert replicas
        os.kill(replicas[0][0], signal.SIGKILL)  # no restart allowed: Ray gives up on the run
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1 and "bug in icl-toolkit" not in err, err[-2000:]  # (Ray logs its traceback above)
    assert "error: The Ray run stopped after" in err and "run the same command with --resume" in err
    kept = _shards(tmp_path / "ray")
    assert 0 < kept < 100
    r = _run(*args, "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    _once(tmp_path / "ray", 100)


def test_without_ray_the_error_names_the_install_command(monkeypatch, small_cohort, tmp_path, invoke):
    import builtins

    real = builtins.__import__

    def no_ray(name, *a, **kw):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    from icl_toolkit.inference.ray import require_ray

    with pytest.raises(IclError, match=r'pip install "icl-toolkit\[ray\]"'):
        require_ray()
    write_cohort(small_cohort[:2], tmp_path / "c.jsonl")
    code, text = invoke(["predict", "--cohort", tmp_path / "c.jsonl", "--demos", "none", "--out", tmp_path / "o",
                         "--engine", "ray"])
    assert code == 1 and 'pip install "icl-toolkit[ray]"' in text and "Traceback" not in text


def test_sharded_output_rules(tmp_path):
    from icl_toolkit.core.errors import ConfigError
    from icl_toolkit.inference.output import ShardedOutput

    out = ShardedOutput(tmp_path / "o", {"model_id": "a"})
    out.write([{"patient_id": "1"}, {"patient_id": "2"}])
    (tmp_path / "o" / "part-00001.jsonl").write_text('{"patient_id": "3"}\n')    # written, never listed: a kill
    with pytest.raises(ConfigError, match="--resume to continue"):
        ShardedOutput(tmp_path / "o", {"model_id": "a"})
    with pytest.raises(ConfigError, match="model_id"):
        ShardedOutput(tmp_path / "o", {"model_id": "b"}, resume=True)
    again = ShardedOutput(tmp_path / "o", {"model_id": "a"}, resume=True)
    assert again.done == {"1", "2"} and not (tmp_path / "o" / "part-00001.jsonl").exists()
    with pytest.raises(ConfigError, match="written twice"):
        again.write([{"patient_id": "2"}])
    again.write([{"patient_id": "3"}])
    assert [r["patient_id"] for r in again.records()] == ["1", "2", "3"]
    fresh = ShardedOutput(tmp_path / "o", {"model_id": "c"}, overwrite=True)
    assert len(fresh.records()) == 3          # the old run stays until the new one writes its first shard
    fresh.write([{"patient_id": "9"}])
    assert [r["patient_id"] for r in fresh.records()] == ["9"]
    # the same output rules as a single file's (icl_toolkit.inference.run.check_output), in a folder's shape
    (tmp_path / "f.jsonl").write_text("")
    with pytest.raises(ConfigError, match="is a file; with --engine ray"):
        ShardedOutput(tmp_path / "f.jsonl", {"model_id": "a"}, overwrite=True)
    with pytest.raises(ConfigError, match="is both --cohort and"):
        ShardedOutput(tmp_path / "o", {"model_id": "a"}, overwrite=True, inputs={"--cohort": tmp_path / "o"})
    with pytest.raises(ConfigError, match="contradict"):
        ShardedOutput(tmp_path / "o", {"model_id": "a"}, overwrite=True, resume=True)
    # a folder of other files is not a run: refused whatever the flags, and left as it was
    other = tmp_path / "results"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    (other / "sub").mkdir()
    for flags in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(ConfigError, match=r"results holds files that are not a sharded run .*notes\.txt, sub.*"
                                              r"Nothing was changed"):
            ShardedOutput(other, {"model_id": "a"}, **flags)
    assert sorted(f.name for f in other.iterdir()) == ["notes.txt", "sub"]
    assert (other / "notes.txt").read_text() == "keep me"
    # shards left by a run killed before its first manifest hold no finished patient: a plain run writes over them
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "part-00000.jsonl").write_text('{"patient_id": "1"}\n')
    (killed / ".part-00001.jsonl.tmp").write_text("")
    restart = ShardedOutput(killed, {"model_id": "a"})
    assert restart.done == set()
    restart.write([{"patient_id": "5"}])
    assert [r["patient_id"] for r in restart.records()] == ["5"]
    # --overwrite replaces the run (manifest and shards) and nothing else: the driver's index, a file put there
    (tmp_path / "o" / "index").mkdir()
    (tmp_path / "o" / "index" / "index.json").write_text("{}")
    (tmp_path / "o" / "README.txt").write_text("mine")
    replaced = ShardedOutput(tmp_path / "o", {"model_id": "d"}, overwrite=True)
    replaced.write([{"patient_id": "7"}])
    assert sorted(f.name for f in (tmp_path / "o").iterdir()) == ["README.txt", "index", "manifest.json",
                                                                    "part-00000.jsonl"]
    assert [r["patient_id"] for r in replaced.records()] == ["7"]
    empty = ShardedOutput(tmp_path / "o", {"model_id": "e"}, overwrite=True)
    empty.finish()                                     # nothing to write still replaces the run, and only it
    assert sorted(f.name for f in (tmp_path / "o").iterdir()) == ["README.txt", "index", "manifest.json"]
    assert empty.records() == []


def test_a_given_index_of_another_pool_is_refused_before_ray_starts(files, small_cohort, tiny_model_dir, tmp_path):
    from icl_toolkit.retrieval.config import RetrievalConfig
    from icl_toolkit.retrieval.index import DemoIndex
    from icl_toolkit.retrieval.representations import make_representation

    DemoIndex.build(small_cohort[60:120], make_representation(RetrievalConfig())).save(tmp_path / "idx")
    r = _run("predict", "--cohort", files / "test.jsonl", *_common(files, tiny_model_dir), "--index",
             tmp_path / "idx", "--out", tmp_path / "o", "--engine", "ray")
    text = r.stdout + r.stderr
    assert r.returncode == 1 and "pool_hash" in text and "Traceback" not in text, text[-2000:]
    assert not (tmp_path / "o" / "manifest.json").exists()      # refused by the driver, not failed in replicas


def test_driver_rebuilds_an_index_left_by_another_run(tmp_path, small_cohort):
    """The driver's own index (``<out>/index``) is reused only when it was built from this pool with these
    retriever settings; one left by a replaced run is rebuilt, never read by the replicas."""
    from icl_toolkit.inference.ray import _fits
    from icl_toolkit.retrieval.config import RetrievalConfig
    from icl_toolkit.retrieval.index import DemoIndex
    from icl_toolkit.retrieval.representations import make_representation

    def rep(**settings):
        return make_representation(RetrievalConfig(**settings))

    pool_a, pool_b = small_cohort[:120], small_cohort[120:240]
    DemoIndex.build(pool_a, rep()).save(tmp_path / "index")  # an index without a task: the default task's
    assert _fits(tmp_path / "index", pool_a, rep(), "adrd_5y")
    assert not _fits(tmp_path / "index", pool_a, rep(), "in_hospital_mortality")  # another task
    assert not _fits(tmp_path / "index", pool_b, rep(), "adrd_5y")                # another pool
    assert not _fits(tmp_path / "index", pool_a, rep(retriever="sparse"), "adrd_5y")  # another retriever
    assert not _fits(tmp_path / "nothing", pool_a, rep(), "adrd_5y")


def test_vllm_processor_settings_score_the_answer_slot():
    """The ray.data.llm pre/post-processing (no vLLM needed to check them): one token, the answers' log-probs,
    P(yes) normalised over the two, as the toolkit's own vLLM backend computes it."""
    import math

    from icl_toolkit.backends import choice_probabilities
    from icl_toolkit.inference.ray import vllm_processor_config

    kwargs, pre, post = vllm_processor_config("/models/m", [9642, 2309], replicas=4, max_model_len=4096)
    assert kwargs["concurrency"] == 4 and kwargs["chat_template_stage"] is False and kwargs["tokenize_stage"] is False
    assert kwargs["engine_kwargs"]["max_model_len"] == 4096
    row = pre({"prompt": "... ADRD within 5 years:", "patient_id": "P1"})
    assert row["sampling_params"] == {"max_tokens": 1, "temperature": 0.0, "detokenize": False,
                                      "logprob_token_ids": [9642, 2309]}
    out = post({**row, "logprobs": [{9642: {"logprob": math.log(0.3)}, 2309: {"logprob": math.log(0.1)}}]})
    assert out["patient_id"] == "P1" and out["probability"] == pytest.approx(0.75)
    assert out["probability"] == pytest.approx(choice_probabilities(out["logprobs"])[0])


@pytest.mark.ray
def test_rationales_on_ray_equal_the_single_process_generations(files, tiny_model_dir, tmp_path):
    from icl_toolkit.data.cohort import read_cohort

    common = ["rationales", "generate", "--cohort", files / "test.jsonl", "--model", tiny_model_dir, "--limit", 6,
              "--max-new-tokens", 16, "--history-tokens", 120]
    r = _run(*common, "--out", tmp_path / "ray.jsonl", "--engine", "ray", "--replicas", 2, "--chunk-size", 2)
    assert r.returncode == 0, r.stderr[-2000:]
    r = _run(*common, "--out", tmp_path / "local.jsonl")
    assert r.returncode == 0, r.stderr[-2000:]
    local = {x["patient_id"]: x for x in map(json.loads, (tmp_path / "local.jsonl.generations.jsonl").read_text()
                                               .splitlines())}
    ray_recs = {x["patient_id"]: x for x in _records(tmp_path / "ray.jsonl.generations")}
    assert set(ray_recs) == set(local) and len(local) == 6
    assert all(ray_recs[k] == local[k] for k in local)
    assert [(p.patient_id, p.rationales) for p in read_cohort(tmp_path / "ray.jsonl")] == \
           [(p.patient_id, p.rationales) for p in read_cohort(tmp_path / "local.jsonl")]


@pytest.mark.ray
def test_ray_reads_a_meds_root_shard_by_shard(files, small_cohort, tiny_model_dir, tmp_path):
    from icl_toolkit.data.meds import write_meds

    write_meds(small_cohort[200:224], tmp_path / "meds", dataset_name="t", dataset_version="v", shard_size=10)
    labels = tmp_path / "meds" / "labels" / "adrd_5y.parquet"
    r = _run("predict", "--cohort", tmp_path / "meds", "--meds-labels", labels, *_common(files, tiny_model_dir),
             "--out", tmp_path / "ray", "--engine", "ray")
    assert r.returncode == 0, r.stderr[-2000:]
    r = _run("data", "from-meds", "--root", tmp_path / "meds", "--labels", labels, "--out", tmp_path / "c.jsonl")
    assert r.returncode == 0, r.stderr[-2000:]
    r = _run("predict", "--cohort", tmp_path / "c.jsonl", *_common(files, tiny_model_dir), "--out",
             tmp_path / "local.jsonl")
    assert r.returncode == 0, r.stderr[-2000:]
    local = {x["patient_id"]: x for x in map(json.loads, (tmp_path / "local.jsonl").read_text().splitlines())}
    ray_recs = {x["patient_id"]: x for x in _records(tmp_path / "ray")}
    assert set(ray_recs) == set(local) and len(local) == 24
    assert all(abs(ray_recs[k]["probability"] - v["probability"]) <= 1e-5 and
               ray_recs[k]["prompt_hash"] == v["prompt_hash"] for k, v in local.items())
