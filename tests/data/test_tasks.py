"""Any binary task on MEDS data: task definitions in every template, labels as the truth, generic events, the
MIMIC-IV code map, MEDS schemas as the tools write them, and the MEDS testing library's own dataset end to end."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.cohort import Patient, read_cohort, write_cohort
from icl_toolkit.data.meds import open_meds
from icl_toolkit.data.meds.codes import load_code_map
from icl_toolkit.data.synth import SynthConfig, generate_cohort
from icl_toolkit.data.task import (
    ADRD,
    Task,
    load_task,
    read_cohort_task,
    task_file,
    task_horizon,
    write_cohort_task,
)
from icl_toolkit.inference.config import PredictConfig
from icl_toolkit.prompting.builder import PromptBuilder
from icl_toolkit.retrieval.retriever import Hit

FIXTURE = Path(__file__).resolve().parents[1] / "prompting" / "adrd_prompts.json"
MORTALITY = Task(
    name="in_hospital_mortality",
    question="Will this patient die before leaving the hospital?",
    answer="Death in hospital",
)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class _Tok:
    """A backend stand-in for the teacher's prompts: only the tokenizer is used."""

    model_id = "x"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer


# ----------------------------------------------------------------------------------------------- templates


def test_adrd_prompts_are_byte_identical_under_the_default_task(lm_tokenizer):
    """tests/prompting/adrd_prompts.json holds the hashes of prompts rendered by the templates before they read the
    task's words (every template, the teacher's and SFT's training examples); the default task renders them."""
    from icl_toolkit.rationales.teacher import RationaleTeacher
    from icl_toolkit.training.sft import build_examples

    want = json.loads(FIXTURE.read_text())
    pts = generate_cohort(SynthConfig(n=12, seed=3))
    pool = {p.patient_id: p for p in pts[4:]}
    hits = [Hit(p.patient_id, 0.9 - 0.1 * i, p.label, i) for i, p in enumerate(pts[4:8])]
    settings = {
        "zero_shot": dict(k=0),
        "rationale": dict(k=4, demos="rationale"),
        "stepwise": dict(k=4, demos="rationale", rationale="stepwise"),
        "label": dict(k=4, demos="label"),
        "reason": dict(k=4, demos="rationale", mode="reason"),
        "reason_zero": dict(k=0, mode="reason"),
    }
    for name, opts in settings.items():
        b = PromptBuilder(lm_tokenizer, PredictConfig.from_options(**opts).prompt, 8192)
        got = [_sha(b.build(q, hits if opts["k"] else [], pool).text) for q in pts[:4]]
        assert got == want[name], name
        assert b.answer_prefix == want[name + "_prefix"] == "ADRD within 5 years:"
    teacher = RationaleTeacher(_Tok(lm_tokenizer))
    assert [_sha(teacher.prompt(q, s)) for q in pts[:4] for s in ("free_text", "stepwise")] == want["teacher"]
    sft = build_examples(pts[:4], lm_tokenizer, "label", query_tokens=160)
    assert [_sha(json.dumps(e.input_ids)) for e in sft] == want["sft"]


def test_a_non_adrd_task_asks_its_question_in_every_template(lm_tokenizer):
    from icl_toolkit.data.cohort import Rationales
    from icl_toolkit.rationales.config import TeacherConfig
    from icl_toolkit.rationales.teacher import RationaleTeacher

    pts = generate_cohort(SynthConfig(n=10, seed=5))
    for p in pts:  # the synthetic cohort's rationales are about ADRD: neutral ones, so that only templates speak
        p.rationales = Rationales(free_text="The record explains the outcome.", stepwise="1. The record.")
    pool = {p.patient_id: p for p in pts[2:]}
    hits = [Hit(p.patient_id, 0.5, p.label, i) for i, p in enumerate(pts[2:5])]
    for opts in (dict(k=0), dict(k=3, demos="rationale"), dict(k=3, demos="label"), dict(k=3, mode="reason")):
        config = PredictConfig.from_options(**opts, task=MORTALITY).prompt
        b = PromptBuilder(lm_tokenizer, config, 8192)
        text = b.build(pts[0], hits if opts["k"] else [], pool).text
        assert MORTALITY.question in text, opts  # the zero-shot, few-shot and reason templates
        assert "the answer to this question is Yes: Will this patient die" in text  # the system message
        assert "ADRD" not in text and "dementia" not in text.lower(), opts
        assert b.answer_prefix == "Death in hospital:"
        if opts["k"]:
            assert text.count("Death in hospital: Yes") + text.count("Death in hospital: No") >= 3  # each demo
    teacher = RationaleTeacher(_Tok(lm_tokenizer), TeacherConfig(task=MORTALITY))
    for style in ("free_text", "stepwise"):
        pos, neg = (teacher.prompt(p, style) for p in (pts[0].__class__(**{**_fields(pts[0]), "label": 1}),
                                                        pts[0].__class__(**{**_fields(pts[0]), "label": 0})))
        assert 'Known outcome: the answer to "Will this patient die before leaving the hospital?" was Yes.' in pos
        assert "was No." in neg and "an experienced clinician" in pos and "geriatrician" not in pos
        assert "Alzheimer" not in pos + neg
    assert 'Conclusion: outcome expected' in teacher.prompt(pts[0].__class__(**{**_fields(pts[0]), "label": 1}),
                                                            "stepwise")


def _fields(p: Patient) -> dict:
    return {f: getattr(p, f) for f in p.__slots__ if not f.startswith("__")}


def test_task_files_toml_and_aces_yaml(tmp_path):
    (tmp_path / "t.toml").write_text('name = "readmission_30d"\nquestion = "Will the patient be readmitted?"\n')
    t = load_task(tmp_path / "t.toml")
    assert (t.name, t.answer, t.horizon_years) == ("readmission_30d", "Outcome", None)
    aces = tmp_path / "in_icu_mortality.yaml"  # an ACES task configuration with a question line added
    aces.write_text(
        "predicates:\n  death:\n    code: MEDS_DEATH\ntrigger: icu_admission\nwindows: {}\n"
        "question: Will this patient die in the ICU?\n"
    )
    y = load_task(aces)
    assert (y.name, y.question) == ("in_icu_mortality", "Will this patient die in the ICU?")
    (tmp_path / "bad.yaml").write_text("predicates: {}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: question: missing"):
        load_task(tmp_path / "bad.yaml")
    (tmp_path / "bad.toml").write_text('name = "a b"\nquestion = "Q?"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: name: "):
        load_task(tmp_path / "bad.toml")
    # the horizon: the task's replaces the default, an explicit other one is refused
    assert task_horizon(ADRD, 5.0) == 5.0 and task_horizon(Task(name="x", question="Q?", horizon_years=1), 5.0) == 1
    with pytest.raises(ConfigError, match="has a horizon of 1 years"):
        task_horizon(Task(name="x", question="Q?", horizon_years=1), 3.0)
    # the one spec applies it (every front end passes the task through it)
    one_year = Task(name="x", question="Q?", horizon_years=1)
    spec = PredictConfig.from_options(k=0, task=one_year)
    assert spec.prompt.horizon_years == spec.retrieval.horizon_years == 1
    assert PredictConfig.from_options(k=0, task=one_year, horizon_years=1).prompt.horizon_years == 1
    with pytest.raises(ConfigError, match="has a horizon of 1 years"):
        PredictConfig.from_options(k=0, task=one_year, horizon_years=3)


# ------------------------------------------------------------------------------------------ mixing refused


def test_mixing_tasks_is_refused_by_name(tmp_path, tiny_backend_obj, hash_embedder):
    from icl_toolkit.inference.predictor import Predictor
    from icl_toolkit.inference.run import predict_file
    from icl_toolkit.retrieval.index import build_index

    pts = generate_cohort(SynthConfig(n=40, seed=2))
    write_cohort(pts[:30], tmp_path / "pool.jsonl")
    write_cohort(pts[30:], tmp_path / "test.jsonl")
    write_cohort_task(tmp_path / "pool.jsonl", MORTALITY)
    # a prediction for ADRD with a mortality pool
    with pytest.raises(ConfigError, match="answers task 'adrd_5y' but the pool file"):
        predict_file(tmp_path / "test.jsonl", tmp_path / "p.jsonl", PredictConfig.from_options(k=2, demos="label"),
                     pool=tmp_path / "pool.jsonl")
    # an index built for ADRD, used by a mortality predictor
    config = PredictConfig.from_options(k=2, demos="label", retriever="dense", task=MORTALITY)
    index = build_index(pts[:30], config.retrieval, embedder=hash_embedder, out=tmp_path / "idx", progress=False,
                        task="adrd_5y")
    with pytest.raises(ConfigError, match="the index answers task 'adrd_5y' but pool answers task"):
        Predictor(tiny_backend_obj, config, embedder=hash_embedder, progress=False).fit(pts[:30], tmp_path / "idx")
    assert index.meta["task"] == "adrd_5y"
    # a checkpoint fine-tuned for ADRD, asked a mortality question
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "icl-checkpoint.json").write_text(json.dumps({"prompt": {"template": "zero_shot", "task": "adrd_5y"}}))
    with pytest.raises(ConfigError, match=r"checkpoint .*ckpt answers task 'adrd_5y' but the cohort answers"):
        PredictConfig.from_options(k=0, task=MORTALITY).for_model(str(ckpt))
    # retrieval caches of another task are not reused: the key carries the task
    from icl_toolkit.retrieval.retriever import Retriever

    r = Retriever(config.retrieval, hash_embedder).fit(pts[:30], progress=False)
    assert "task" not in r.cache_key() and r.cache_key(MORTALITY.name)["task"] == MORTALITY.name


def test_compare_refuses_cohorts_of_two_tasks(tmp_path):
    from icl_toolkit.evaluation.compare.run import compare

    pts = generate_cohort(SynthConfig(n=30, seed=2))
    write_cohort(pts[:20], tmp_path / "pool.jsonl")
    write_cohort(pts[20:], tmp_path / "test.jsonl")
    write_cohort_task(tmp_path / "pool.jsonl", MORTALITY)
    write_cohort_task(tmp_path / "test.jsonl", ADRD)
    (tmp_path / "arms.toml").write_text('[[arm]]\ndemos = "none"\n')
    with pytest.raises(ConfigError, match="answers task 'adrd_5y' but the pool cohort"):
        compare(tmp_path / "arms.toml", tmp_path / "test.jsonl", tmp_path / "pool.jsonl", tmp_path / "out")


# ---------------------------------------------------------------------------------- positives without dates


def test_positive_labels_without_dates_pass_validation_retrieval_prompts_and_rationales(
    tmp_path, lm_tokenizer, hash_embedder
):
    from icl_toolkit.rationales.teacher import RationaleTeacher
    from icl_toolkit.retrieval.config import RetrievalConfig
    from icl_toolkit.retrieval.retriever import Retriever

    pts = generate_cohort(SynthConfig(n=60, seed=8))
    for p in pts:
        p.outcome_date = None  # a task's labels: positives with no known onset date
    write_cohort(pts, tmp_path / "c.jsonl")
    back = read_cohort(tmp_path / "c.jsonl")  # validation accepts them
    assert sum(p.label == 1 for p in back) > 3 and all(p.outcome_date is None for p in back)
    # the temporal guard: an undated positive's outcome may fall anywhere in its window, so a demo is shown only
    # when its whole window ended by the query's index date
    query = back[0]
    pool = back[1:]
    for i, p in enumerate(pool):
        p.index_date = query.index_date - dt.timedelta(days=365 * (3 if i % 2 else 6))
    r = Retriever(RetrievalConfig(retriever="dense", k=4, temporal_guard=True), hash_embedder).fit(pool, progress=False)
    shown = r.retrieve([query], progress=False)[0].hits
    ends = {p.patient_id: p.index_date + dt.timedelta(days=round(5 * 365.25)) for p in pool}
    assert shown and all(ends[h.patient_id] <= query.index_date for h in shown)
    # prompts show an undated positive demo as "Yes"
    pos = next(p for p in pool if p.label == 1)
    b = PromptBuilder(lm_tokenizer, PredictConfig.from_options(k=1, demos="label").prompt, 8192)
    assert b.build(query, [Hit(pos.patient_id, 0.9, 1, 0)], {pos.patient_id: pos}).text.count(": Yes") == 1
    # the teacher sees the known outcome and no date it does not have
    text = RationaleTeacher(_Tok(lm_tokenizer)).prompt(pos, "free_text")
    assert "WAS diagnosed" in text and str(pos.index_date.year + 1) not in text.split("Known outcome")[1]


# ------------------------------------------------------------------------------------------------ MEDS rows


def _write(root: Path, rows: list[tuple], labels: list[tuple], *, data_schema: pa.Schema | None = None,
           codes: pa.Table | None = None, label_ts: str = "us") -> Path:
    schema = data_schema or pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")),
                                       ("code", pa.string()), ("numeric_value", pa.float32())])
    (root / "data").mkdir(parents=True)
    cols = list(zip(*rows))
    pq.write_table(pa.Table.from_arrays([pa.array(list(c), type=f.type) for c, f in zip(cols, schema)], schema=schema),
                   root / "data" / "0.parquet")
    (root / "metadata").mkdir()
    if codes is not None:
        pq.write_table(codes, root / "metadata" / "codes.parquet")
    lab = root / "labels.parquet"
    pq.write_table(pa.table({"subject_id": pa.array([r[0] for r in labels], pa.int64()),
                             "prediction_time": pa.array([r[1] for r in labels], pa.timestamp(label_ts)),
                             "boolean_value": pa.array([r[2] for r in labels], pa.bool_())}), lab)
    return lab


T = dt.datetime


def test_unknown_codes_become_generic_events_with_kind_name_value_and_unit(tmp_path):
    rows = [(1, None, "EYE_COLOR//BROWN", None, None), (1, T(1970, 1, 1), "MEDS_BIRTH", None, None),
            (1, T(2010, 5, 1, 9), "ADMISSION//CARDIAC", None, None), (1, T(2010, 5, 1, 9), "HR", 102.5, "bpm"),
            (1, T(2010, 5, 1, 10), "DISCHARGE", None, None), (1, T(2010, 6, 1), "HR", 80.0, "bpm")]
    codes = pa.table({"code": ["HR", "ADMISSION//CARDIAC"], "description": ["Heart Rate", "Cardiac admission"],
                      "parent_codes": pa.array([["LOINC/8867-4"], None], pa.list_(pa.string()))})
    schema = pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string()),
                        ("numeric_value", pa.float32()), ("unit", pa.string())])
    lab = _write(tmp_path / "m", rows, [(1, T(2010, 5, 1, 12), True)], codes=codes, data_schema=schema)
    c = open_meds(tmp_path / "m", lab)
    (p,) = list(c)
    by_code = {e.code: e for e in p.events}
    assert set(by_code) == {"ADMISSION//CARDIAC", "HR", "DISCHARGE"}  # the June HR is after the prediction time
    hr = by_code["HR"]
    assert (hr.kind, hr.system, hr.name, hr.value, hr.unit) == ("lab", "MEDS", "Heart Rate", 102.5, "bpm")
    adm = by_code["ADMISSION//CARDIAC"]
    assert (adm.kind, adm.name, adm.value) == ("observation", "Cardiac admission", None)
    assert by_code["DISCHARGE"].name == "DISCHARGE"  # no description: the code
    assert p.label == 1 and p.outcome_date is None and c.summary.cases_dated == 0
    assert c.summary.unknown_codes["HR"] == 2


def test_outcome_dates_come_from_the_tasks_codes_only(tmp_path):
    """An ADRD code after the prediction time dates an ADRD positive; for another task (without --outcome) it
    does not, and the positive keeps no date."""
    rows = [(1, T(1950, 1, 1), "MEDS_BIRTH", None), (1, T(2010, 1, 1), "ICD10CM//I10", None),
            (1, T(2013, 1, 1), "ICD10CM//G30.9", None)]
    lab = _write(tmp_path / "m", rows, [(1, T(2011, 1, 1), True)])
    (adrd,) = list(open_meds(tmp_path / "m", lab))
    (other,) = list(open_meds(tmp_path / "m", lab, task=MORTALITY))
    assert adrd.outcome_date == dt.date(2013, 1, 1) and other.outcome_date is None and other.label == 1


def test_mimic_iv_code_map_on_rows_in_its_layout(tmp_path):
    rows = [(5, None, "GENDER//M", None, None), (5, T(1950, 3, 1), "MEDS_BIRTH", None, None),
            (5, T(2015, 1, 2, 8), "HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM", None, None),
            (5, T(2015, 1, 2, 8), "ED_REGISTRATION", None, None),
            (5, T(2015, 1, 2, 9), "DIAGNOSIS//ICD//10//I10", None, None),
            (5, T(2015, 1, 2, 9), "DIAGNOSIS//ICD//9//4019", None, None),
            (5, T(2015, 1, 2, 10), "LAB//50931//mg/dL", 142.0, None),
            (5, T(2015, 1, 2, 10), "LAB//50912//mg/dL", 1.1, "mg/dL"),
            (5, T(2015, 1, 2, 11), "MEDICATION//START//Aspirin", None, None),
            (5, T(2015, 1, 2, 12), "PROCEDURE//ICD//10//0DTJ4ZZ", None, None),
            (5, T(2015, 1, 2, 13), "ICU_ADMISSION//Medical Intensive Care Unit (MICU)", None, None),
            (5, T(2015, 1, 3, 13), "TRANSFER_TO//transfer//Med/Surg", None, None),
            (5, T(2015, 1, 4, 13), "HOSPITAL_DISCHARGE//HOME", None, None),
            (5, T(2015, 1, 5), "Blood Pressure", None, None)]
    schema = pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string()),
                        ("numeric_value", pa.float32()), ("unit", pa.string())])
    lab = _write(tmp_path / "m", rows, [(5, T(2015, 1, 6), False)], data_schema=schema)
    c = open_meds(tmp_path / "m", lab, code_map=load_code_map("mimic-iv"))
    (p,) = list(c)
    got = {(e.kind, e.system, e.code): e for e in p.events}
    assert ("diagnosis", "ICD10CM", "I10") in got and ("diagnosis", "ICD9CM", "4019") in got
    glucose = got[("lab", "MIMIC-IV", "50931")]
    assert (glucose.value, glucose.unit) == (142, "mg/dL")  # the unit the code carries
    assert got[("lab", "MIMIC-IV", "50912")].unit == "mg/dL"
    assert ("medication", "MIMIC-IV", "START//Aspirin") in got
    assert ("procedure", "ICD10PCS", "0DTJ4ZZ") in got
    assert ("visit", "visit", "EW EMER.//EMERGENCY ROOM") in got and ("visit", "visit", "ED_REGISTRATION") in got
    assert ("visit", "visit", "Medical Intensive Care Unit (MICU)") in got
    assert ("observation", "MIMIC-IV", "HOME") in got and ("observation", "MIMIC-IV", "transfer//Med/Surg") in got
    assert ("observation", "MEDS", "Blood Pressure") in got  # not in the map: still an event
    assert p.sex == "M" and p.birth_date == dt.date(1950, 3, 1)
    assert dict(c.summary.unknown_codes) == {"Blood Pressure": 1}


def test_schemas_written_by_polars_are_aligned_with_counted_casts(tmp_path):
    schema = pa.schema([("subject_id", pa.int32()), ("time", pa.timestamp("ns")), ("code", pa.large_string()),
                        ("numeric_value", pa.float64())])
    rows = [(3, T(1960, 1, 1), "MEDS_BIRTH", None), (3, T(2011, 1, 1, 5, 6, 7, 123456), "ICD10CM//I10", None),
            (3, T(2011, 2, 1), "LOINC//4548-4", 7.4)]
    codes = pa.table({"code": pa.array(["ICD10CM//I10"], pa.large_string()),
                      "description": pa.array(["Essential hypertension"], pa.large_string()),
                      "parent_codes": pa.array([["ICD10CM//I"]], pa.large_list(pa.large_string()))})
    lab = _write(tmp_path / "m", rows, [(3, T(2012, 1, 1), True)], data_schema=schema, codes=codes,
                 label_ts="ns")
    c = open_meds(tmp_path / "m", lab)
    (p,) = list(c)
    assert [e.name for e in p.events][0] == "Essential hypertension" and p.events[1].value == 7.4
    casts = c.summary.casts
    assert casts["code: large_string -> string"] == 2  # the data shard and codes.parquet
    assert casts["description: large_string -> string"] == 1
    assert casts["parent_codes: large_list<element: large_string> -> list<item: string>"] == 1
    assert casts["time: timestamp[ns] -> timestamp[us]"] == 1
    assert casts["prediction_time: timestamp[ns] -> timestamp[us]"] == 1
    assert casts["subject_id: int32 -> int64"] == 1
    assert "numeric_value: double -> float" not in casts  # float64 is read as it is (nothing lost)
    # a column that cannot be cast is an error naming the file and the column
    bad = pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.list_(pa.string())),
                     ("numeric_value", pa.float32())])
    lab2 = _write(tmp_path / "bad", [(1, T(2010, 1, 1), ["X"], None)], [(1, T(2012, 1, 1), True)], data_schema=bad)
    with pytest.raises(ConfigError, match=r"0\.parquet: column 'code': expected string \(MEDS\), found list"):
        list(open_meds(tmp_path / "bad", lab2))


# ------------------------------------------------------------------- the MEDS testing library's own dataset


@pytest.fixture(scope="module")
def meds_sample(tmp_path_factory):
    """``simple_static_sharded_by_split_with_tasks``, written by the MEDS testing library itself."""
    from meds_testing_helpers.dataset import MEDSDataset
    from meds_testing_helpers.static_sample_data import SIMPLE_STATIC_SHARDED_BY_SPLIT_WITH_TASKS

    root = tmp_path_factory.mktemp("meds_sample")
    MEDSDataset.from_yaml(SIMPLE_STATIC_SHARDED_BY_SPLIT_WITH_TASKS).write(root)
    return root


def test_meds_testing_library_dataset_imports_and_predicts_its_task(meds_sample, tmp_path, invoke, tiny_model_dir,
                                                                    lm_tokenizer):
    task = tmp_path / "task.toml"
    task.write_text('name = "boolean_value_task"\nquestion = "Will this patient have the sample task\'s outcome?"\n')
    out = tmp_path / "c.jsonl"
    code, text = invoke(["data", "from-meds", "--root", meds_sample, "--labels",
                         meds_sample / "task_labels" / "boolean_value_task", "--out", out, "--task", task])
    assert code == 0, text
    pts = read_cohort(out)
    assert len(pts) == 21 and sum(p.label == 1 for p in pts) == 12  # every positive kept
    assert all(p.events for p in pts)  # histories are not empty
    assert {e.code for p in pts for e in p.events} >= {"HR", "TEMP", "ADMISSION//CARDIAC"}
    assert read_cohort_task(out).name == "boolean_value_task" and task_file(out).is_file()
    summary = json.loads(out.with_name(out.name + ".summary.json").read_text())
    assert summary["summary"]["cases"] == 12 and summary["summary"]["cases_with_outcome_date"] == 0
    code, text = invoke(["predict", "--cohort", out, "--pool", out, "--k", "2", "--demos", "label",
                         "--retriever", "sparse", "--model", tiny_model_dir, "--out", tmp_path / "p.jsonl"])
    assert code == 0, text
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(records) == 21 and all(0 <= r["probability"] <= 1 for r in records)
    # the prompt asks the task's question (what icl predict rendered: its recorded hash)
    builder = PromptBuilder(lm_tokenizer, PredictConfig.from_options(k=0, task=read_cohort_task(out)).prompt, 8192)
    prompt = builder.build(pts[0], [], {}).text
    assert "Will this patient have the sample task's outcome?" in prompt and "ADRD" not in prompt


def test_compare_runs_a_non_adrd_task_and_reports_it(tmp_path, tiny_model_dir):
    """The comparison's own index, retrieval caches and arms carry the cohorts' task; the report and model cards
    name it."""
    from icl_toolkit.evaluation.compare.run import compare

    pts = generate_cohort(SynthConfig(n=80, seed=6))
    for name, part in (("pool", pts[:50]), ("test", pts[50:70]), ("val", pts[70:])):
        write_cohort(part, tmp_path / f"{name}.jsonl")
        write_cohort_task(tmp_path / f"{name}.jsonl", MORTALITY)
    (tmp_path / "arms.toml").write_text(
        f'baselines = ["knn", "age"]\nbootstrap = 50\nfairness_bootstrap = 0\n[checkpoints]\nbase = "{tiny_model_dir}"\n'
        '[prompt]\nquery_tokens = 120\ndemo_tokens = 100\n[[arm]]\ncheckpoint = "base"\ndemos = ["none", "label"]\nk = 2\n'
    )
    out = tmp_path / "out"
    result = compare(tmp_path / "arms.toml", tmp_path / "test.jsonl", tmp_path / "pool.jsonl", out,
                     val=tmp_path / "val.jsonl", progress=False)
    assert {r["name"] for r in result.rows} >= {"base / none / score", "base / label k=2 similar / score"}
    assert json.loads((out / "index" / "index.json").read_text())["meta"]["task"] == MORTALITY.name
    meta = json.loads((out / "arms" / "base_label_k_2_similar_score.jsonl.meta.json").read_text())
    assert meta["task"] == MORTALITY.name and meta["config"]["prompt"]["task"]["question"] == MORTALITY.question
    report = (out / "report.md").read_text()
    assert f"Task: `{MORTALITY.name}`: {MORTALITY.question}" in report
    assert "### base / none / score" in report and f"- **Task**: `{MORTALITY.name}`" in report
    # run again: the finished arms are reused under the same task
    again = compare(tmp_path / "arms.toml", tmp_path / "test.jsonl", tmp_path / "pool.jsonl", out,
                    val=tmp_path / "val.jsonl", progress=False)
    assert [r["auroc"] for r in again.rows] == [r["auroc"] for r in result.rows]
