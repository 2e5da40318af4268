"""MEDS and ACES: round trip, schema validity, the shipped ACES task, several prediction times per subject,
malformed input, and predictions in the meds-evaluation schema."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import meds
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.cohort import read_cohort, write_cohort
from icl_toolkit.data.meds import INDEX_CODE, CodeMap, open_meds, write_meds, write_meds_predictions
from icl_toolkit.data.meds.codes import CodeResolver, sex_of
from icl_toolkit.data.synth import SynthConfig, generate_cohort
from icl_toolkit.data.synth.generate import Disparity

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cohort():
    # with an access disparity, so that records carry a group attribute (written as GROUP//access//VALUE rows)
    return generate_cohort(SynthConfig(n=120, seed=4, split={"train": 0.6, "val": 0.2, "test": 0.2},
                                       disparity=Disparity()))


@pytest.fixture(scope="module")
def exported(cohort, tmp_path_factory):
    root = tmp_path_factory.mktemp("meds") / "root"
    summary = write_meds(cohort, root, dataset_name="synth", dataset_version="v", shard_size=30)
    return root, summary


def _key(p):
    return (p.patient_id, p.sex, p.birth_date, p.index_date, p.label, p.outcome_date, p.split, p.history(),
            sorted(p.groups.items()))


def test_round_trip_gives_the_same_patients(cohort, exported):
    root, summary = exported
    reader = open_meds(root, root / "labels" / "adrd_5y.parquet")
    reader.batch_size = 7                       # subjects span record batches
    got = list(reader)
    assert len(got) == len(cohort) == summary.label_rows
    assert {p.groups["access"] for p in got} == {"limited", "standard"}
    assert sorted(map(_key, got)) == sorted(map(_key, cohort))
    assert all(p.metadata["source"] == "meds" and isinstance(p.metadata["subject_id"], int) for p in got)
    # the split filter reads metadata/subject_splits.parquet
    held = list(open_meds(root, root / "labels" / "adrd_5y.parquet", split="held_out"))
    assert {p.patient_id for p in held} == {p.patient_id for p in cohort if p.split == "test"}


def test_export_validates_against_the_meds_schemas(exported, cohort):
    root, summary = exported
    shards = sorted((root / "data").rglob("*.parquet"))
    assert len(shards) == len(summary.shards) >= 3           # 30 subjects a shard, one folder per split
    assert {s.parent.name for s in shards} == {"train", "tuning", "held_out"}
    seen: set[int] = set()
    for s in shards:
        table = pq.read_table(s)
        meds.DataSchema.validate(table)
        ids = table.column("subject_id").to_pylist()
        runs = [ids[0]] + [b for a, b in zip(ids, ids[1:]) if a != b]
        assert len(runs) == len(set(runs)) and not (set(runs) & seen)    # contiguous, one shard per subject
        seen |= set(runs)
        for sid in set(runs):
            times = [t for i, t in zip(ids, table.column("time").to_pylist()) if i == sid]
            timed = [t for t in times if t is not None]
            assert times[:len(times) - len(timed)] == [None] * (len(times) - len(timed))   # static rows first
            assert timed == sorted(timed)
    assert len(seen) == len(cohort)
    codes = pq.read_table(root / meds.code_metadata_filepath)
    meds.CodeMetadataSchema.validate(codes)
    all_codes = {c for s in shards for c in pq.read_table(s, columns=["code"]).column("code").to_pylist()}
    assert all_codes <= set(codes.column("code").to_pylist())
    meds.SubjectSplitSchema.validate(pq.read_table(root / meds.subject_splits_filepath))
    meds.DatasetMetadataSchema.validate(json.loads((root / meds.dataset_metadata_filepath).read_text()))
    meds.LabelSchema.validate(pq.read_table(root / "labels" / "adrd_5y.parquet"))


def test_shipped_aces_task_reproduces_the_cohorts_labels(exported, cohort):
    from aces import config, predicates, query
    from omegaconf import DictConfig

    root, _ = exported
    task = config.TaskExtractorConfig.load(config_path=REPO / "recipes" / "tasks" / "adrd_5y.yaml")
    df = predicates.get_predicates_df(task, DictConfig({"path": str(root / "data"), "standard": "meds"}))
    result = query.query(task, df)
    got = {(s, t): bool(y) for s, t, y in zip(result["subject_id"].to_list(), result["index_timestamp"].to_list(),
                                               result["label"].to_list())}
    labels = pq.read_table(root / "labels" / "adrd_5y.parquet")
    want = {(s, t): y for s, t, y in zip(*(labels.column(c).to_pylist()
                                           for c in ("subject_id", "prediction_time", "boolean_value")))}
    assert got == want and sum(want.values()) == sum(p.label for p in cohort) > 0


# --------------------------------------------------------------------------- hand-made MEDS datasets

def _ts(*a):
    return dt.datetime(*a)


def _write_meds(root: Path, rows: list[tuple], labels: list[tuple], *, codes: dict[str, str] | None = None,
                shards: list[list[tuple]] | None = None, schema: pa.Schema | None = None) -> Path:
    schema = schema or pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string()),
                                  ("numeric_value", pa.float32()), ("text_value", pa.large_string())])
    (root / "data").mkdir(parents=True)
    for i, shard in enumerate(shards or [rows]):
        cols = list(zip(*shard)) if shard else [[] for _ in schema]
        pq.write_table(pa.Table.from_arrays([pa.array(list(c), type=f.type) for c, f in zip(cols, schema)],
                                            schema=schema), root / "data" / f"{i}.parquet")
    (root / "metadata").mkdir()
    if codes:
        pq.write_table(pa.table({"code": list(codes), "description": list(codes.values()),
                                 "parent_codes": pa.array([None] * len(codes), pa.list_(pa.string()))}),
                       root / "metadata" / "codes.parquet")
    lab = root / "labels.parquet"
    pq.write_table(pa.table({"subject_id": pa.array([r[0] for r in labels], pa.int64()),
                             "prediction_time": pa.array([r[1] for r in labels], pa.timestamp("us")),
                             "boolean_value": pa.array([r[2] for r in labels], pa.bool_())}), lab)
    return lab


def _subject(sid: int, birth: dt.datetime, events: list[tuple], sex: str = "GENDER//F") -> list[tuple]:
    return [(sid, None, sex, None, None), (sid, birth, "MEDS_BIRTH", None, None),
            *[(sid, t, code, num, txt) for t, code, num, txt in events]]


@pytest.fixture()
def multi(tmp_path):
    """Subject 7 labelled at three times (the last a case with a later G30 record), plus four other subjects."""
    rows = _subject(7, _ts(1940, 5, 1), [
        (_ts(2010, 1, 5, 9), "ICD10CM//I10", None, None),
        (_ts(2012, 3, 1, 8), "LOINC//4548-4", 6.7, None),
        (_ts(2014, 6, 2, 10), "RxNorm//1191", None, None),
        (_ts(2016, 8, 9, 11), "ICD10CM//E11.9", None, None),
        (_ts(2016, 8, 9, 15), "LOINC//8480-6", 150.0, None),       # after the last prediction time, same day
        (_ts(2018, 2, 2), "ICD10CM//G30.9", None, None)])
    labels = [(7, _ts(2011, 1, 1), False), (7, _ts(2013, 1, 1), False), (7, _ts(2016, 8, 9, 12), True)]
    for sid in (3, 4, 5, 9):
        rows += _subject(sid, _ts(1945, 1, sid), [(_ts(2010, 2, sid), "ICD10CM//I10", None, None),
                                                  (_ts(2011, 2, sid), "RxNorm//1191", None, None)], sex="GENDER//M")
        labels.append((sid, _ts(2013, 1, 1), False))
    rows.sort(key=lambda r: r[0])
    lab = _write_meds(tmp_path / "m", rows, labels, codes={"ICD10CM//I10": "Essential hypertension"})
    return tmp_path / "m", lab


def test_records_stream_out_before_later_shards_are_read(tmp_path):
    """One subject at a time: the first shard's records come out before a later (broken) shard is opened."""
    shards = [_subject(1, _ts(1950, 1, 1), [(_ts(2010, 1, 1), "ICD10CM//I10", None, None)]),
              _subject(2, _ts(1950, 1, 1), [(_ts(2010, 1, 1), "ICD10CM//I10", None, None)])]
    lab = _write_meds(tmp_path / "m", [], [(1, _ts(2012, 1, 1), False), (2, _ts(2012, 1, 1), False)], shards=shards)
    (tmp_path / "m" / "data" / "1.parquet").write_bytes(b"not parquet")
    it = iter(open_meds(tmp_path / "m", lab))
    assert next(it).patient_id == "1"
    with pytest.raises(ConfigError, match=r"1\.parquet: not a readable parquet file"):
        next(it)


def test_three_prediction_times_give_three_records_without_later_events(multi):
    root, lab = multi
    recs = [p for p in open_meds(root, lab) if p.metadata["subject_id"] == 7]
    assert [p.patient_id for p in recs] == ["7@2011-01-01", "7@2013-01-01", "7@2016-08-09"]
    assert {p.subject_id for p in recs} == {"7"}
    for p in recs:
        cut = dt.datetime.fromisoformat(p.metadata["prediction_time"])
        assert all(e.date <= cut.date() for e in p.events)
    assert [len(p.events) for p in recs] == [1, 2, 4]           # the 15:00 reading after 12:00 is left out
    assert recs[0].events[0].name == "Essential hypertension" and recs[0].events[0].kind == "diagnosis"
    assert recs[1].events[1].value == 6.7 and recs[1].events[1].kind == "lab"
    assert recs[1].events[1].name == "Hemoglobin A1c/Hemoglobin.total in Blood"    # no description: built-in name
    assert [p.label for p in recs] == [0, 0, 1] and recs[2].outcome_date == dt.date(2018, 2, 2)


def test_a_subject_never_retrieves_itself_at_another_prediction_time(multi, hash_embedder):
    from icl_toolkit.retrieval.config import RetrievalConfig
    from icl_toolkit.retrieval.retriever import Retriever

    root, lab = multi
    pool = list(open_meds(root, lab))
    r = Retriever(RetrievalConfig(retriever="dense", k=6), hash_embedder).fit(pool, progress=False)
    for q in [p for p in pool if p.subject_id == "7"]:
        hits = r.retrieve([q], progress=False)[0].hits
        assert hits and not any(h.patient_id.startswith("7@") for h in hits)
        assert len(hits) == 4                                      # only the other four subjects


def test_compare_refuses_a_pool_that_shares_a_subject_with_the_test_set(multi, tmp_path, hash_embedder):
    from icl_toolkit.evaluation.compare import CompareConfig, Comparison

    root, lab = multi
    recs = list(open_meds(root, lab))
    test = [p for p in recs if p.patient_id == "7@2016-08-09"]
    pool = [p for p in recs if p.patient_id != "7@2016-08-09"]
    config = CompareConfig.model_validate({"arm": [{"name": "zero", "demos": "none"}]})
    with pytest.raises(ConfigError, match="subjects are also in the pool"):
        Comparison(config, tmp_path / "cmp", embedder=hash_embedder, progress=False).run(test, pool, [])


def test_malformed_meds_gives_counted_drops(tmp_path):
    rows = _subject(1, _ts(1950, 1, 1), [(_ts(1949, 1, 1), "ICD10CM//I10", None, None),      # before birth
                                        (_ts(2010, 1, 1), "FOO//123", None, None),           # unknown vocabulary
                                        (_ts(2010, 1, 2), "LOINC//4548-4", float("nan"), None),
                                        (_ts(2010, 1, 3), "MEDS_DEATH", None, None)])
    rows += [(2, _ts(2000, 1, 1), "ICD10CM//I10", None, None)]                              # no birth row
    lab = _write_meds(tmp_path / "m", rows, [(1, _ts(2012, 1, 1), False), (2, _ts(2012, 1, 1), False),
                                             (99, _ts(2012, 1, 1), True),                    # unknown subject
                                             (1, _ts(2012, 1, 1), False)])                   # repeated
    c = open_meds(tmp_path / "m", lab)
    got = list(c)
    s = c.summary
    assert [p.patient_id for p in got] == ["1"] and len(got[0].events) == 2
    generic, lab = got[0].events                                       # a code of no known vocabulary is kept
    assert (generic.kind, generic.system, generic.code, generic.name) == ("observation", "MEDS", "FOO//123", "FOO//123")
    assert lab.code == "4548-4" and lab.value is None
    assert s.tables["data"].dropped == {"dated before birth": 1, "death record (not an event kind)": 1,
                         "subject has no birth date": 1}
    assert s.tables["data"].repaired == {"non-finite numeric_value removed (event kept)": 1}
    assert s.attrition == {"label for a subject not in the data": 1, "repeated (subject_id, prediction_time)": 1,
                               "subject has no birth date (no MEDS_BIRTH row)": 1}
    assert s.unknown_codes == {"FOO//123": 1}


@pytest.mark.parametrize("case,match", [
    ("missing", r"0\.parquet: missing column code"),
    ("type", r"0\.parquet: column 'time': expected timestamp\[us\] \(MEDS\), found string"),
    ("order", r"subject_id 1 appears again"),
    ("labels", r"labels\.parquet: no boolean_value column \(found integer_value\)"),
])
def test_malformed_meds_gives_an_error_naming_file_and_column(tmp_path, case, match, invoke):
    root = tmp_path / "m"
    rows = _subject(1, _ts(1950, 1, 1), [(_ts(2010, 1, 1), "ICD10CM//I10", None, None)])
    if case == "missing":
        schema = pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("numeric_value", pa.float32())])
        lab = _write_meds(root, [(r[0], r[1], r[3]) for r in rows], [(1, _ts(2012, 1, 1), False)], schema=schema)
    elif case == "type":
        schema = pa.schema([("subject_id", pa.int64()), ("time", pa.string()), ("code", pa.string())])
        lab = _write_meds(root, [(r[0], str(r[1]), r[2]) for r in rows], [(1, _ts(2012, 1, 1), False)], schema=schema)
    elif case == "order":
        other = _subject(2, _ts(1950, 1, 1), [])
        lab = _write_meds(root, rows[:2] + other + rows[2:], [(1, _ts(2012, 1, 1), False)])
    else:
        lab = _write_meds(root, rows, [(1, _ts(2012, 1, 1), False)])
        pq.write_table(pa.table({"subject_id": pa.array([1], pa.int64()),
                                 "prediction_time": pa.array([_ts(2012, 1, 1)], pa.timestamp("us")),
                                 "integer_value": pa.array([1], pa.int64())}), lab)
    with pytest.raises(ConfigError, match=match):
        list(open_meds(root, lab))
    code, text = invoke(["data", "from-meds", "--root", root, "--labels", lab, "--out", tmp_path / "c.jsonl"])
    assert code == 1 and "Traceback" not in text and re.search(match, text.replace("\n", " ")), text


def test_cli_errors_are_clean(tmp_path, invoke):
    code, text = invoke(["data", "from-meds", "--root", tmp_path / "nowhere", "--labels", tmp_path / "l.parquet",
                         "--out", tmp_path / "c.jsonl"])
    assert code == 1 and "not a folder" in text and "Traceback" not in text
    (tmp_path / "empty" / "data").mkdir(parents=True)
    code, text = invoke(["data", "from-meds", "--root", tmp_path / "empty", "--labels", tmp_path / "l.parquet",
                         "--out", tmp_path / "c.jsonl"])
    assert code == 1 and "no parquet shards" in text


def test_code_map_and_built_in_rules():
    cmap = CodeMap.model_validate({"vocabularies": {"DIAGNOSIS//ICD//10": {"kind": "diagnosis", "system": "ICD10CM"}},
                                   "codes": {"LAB//51000": {"kind": "lab", "system": "LOINC", "code": "4548-4",
                                                             "name": "HbA1c"}},
                                   "static": {"sex": {"DEMO//1": "M"},
                                              "groups": {"RACE//": "race", "RACE//DETAIL//": "race_detail"}},
                                   "ignore": ["HOSPITAL_ADMISSION"]})
    r = CodeResolver(cmap, {"ICD10CM//I10": "Essential hypertension"}, {"SNOMED//44054006": "observation"})
    hit = r.resolve("DIAGNOSIS//ICD//10//I10")
    assert (hit.kind, hit.system, hit.code) == ("diagnosis", "ICD10CM", "I10")
    assert (r.resolve("LAB//51000").code, r.resolve("LAB//51000").name) == ("4548-4", "HbA1c")
    assert r.resolve("ICD10CM//I10").name == "Essential hypertension"
    assert r.resolve("ICD10CM/I10").code == "I10"                     # meds_etl's single slash
    assert r.resolve("LOINC//8480-6").kind == "vital" and r.resolve("LOINC//72172-0").kind == "observation"
    assert r.resolve("CPT//99213").kind == "visit" and r.resolve("CPT//93000").kind == "procedure"
    assert r.resolve("SNOMED//44054006").kind == "observation"       # codes.parquet's icl_kind wins
    assert r.resolve("HOSPITAL_ADMISSION//X") == "ignored code (code map)"
    assert r.resolve(INDEX_CODE).startswith("toolkit marker")
    generic = r.resolve("XYZ//1")                                      # no vocabulary: a generic event of the code
    assert (generic.kind, generic.system, generic.code, generic.name, generic.generic) == (
        "observation", "MEDS", "XYZ//1", "XYZ//1", True)
    assert r.sex("DEMO//1") == "M" and sex_of("GENDER//F") == "F" and sex_of("Sex//male") == "M"
    assert sex_of("GENDER//X") == "U" and sex_of("ICD10CM//I10") is None
    # group attributes from static rows: the code map's prefixes (longest first), and GROUP//ATTR//VALUE built in
    assert r.group("RACE//White") == ("race", "White") and r.group("race//Asian") == ("race", "Asian")
    assert r.group("RACE//DETAIL//Irish") == ("race_detail", "Irish")
    assert r.group("GROUP//payer//medicaid") == ("payer", "medicaid")
    assert r.group("RACE//") is None and r.group("GROUP//payer") is None and r.group("ICD10CM//I10") is None


def test_code_map_file_errors_name_the_field(tmp_path):
    from icl_toolkit.data.meds import load_code_map

    path = tmp_path / "map.toml"
    path.write_text('[vocabularies."LAB"]\nkind = "labs"\nsystem = "LOINC"\n')
    with pytest.raises(ConfigError, match=r"map\.toml: vocabularies\.LAB\.kind"):
        load_code_map(path)


def test_meds_predictions_follow_the_meds_evaluation_schema(multi, tmp_path):
    from meds_evaluation.schema import PredictionSchema

    root, lab = multi
    recs = list(open_meds(root, lab))
    preds = [{"patient_id": p.patient_id, "label": p.label, "predicted": int(i % 2), "probability": 0.1 * i}
             for i, p in enumerate(recs)]
    n, left = write_meds_predictions(preds, recs, tmp_path / "p.meds.parquet")
    table = pq.read_table(tmp_path / "p.meds.parquet")
    PredictionSchema.align(table)
    assert (n, left) == (len(recs), 0)
    assert table.column("subject_id").to_pylist()[:3] == [3, 4, 5] or 7 in table.column("subject_id").to_pylist()
    row = {k: table.column(k).to_pylist()[[p.patient_id for p in recs].index("7@2016-08-09")]
           for k in table.column_names}
    assert row["prediction_time"] == _ts(2016, 8, 9, 12) and row["boolean_value"] is True
    assert np.isclose(row["predicted_boolean_probability"], 0.1 * [p.patient_id for p in recs].index("7@2016-08-09"))
    import polars as pl
    from meds_evaluation.evaluate import evaluate_binary_classification
    from sklearn.metrics import roc_auc_score

    scored = evaluate_binary_classification(pl.read_parquet(tmp_path / "p.meds.parquet"))["samples_equally_weighted"]
    want = roc_auc_score([p["label"] for p in preds], [p["probability"] for p in preds])
    assert scored["roc_auc_score"] == pytest.approx(want, abs=1e-6)
    with pytest.raises(ConfigError, match="no MEDS subject id"):
        write_meds_predictions([{"patient_id": "S-1", "label": 1, "predicted": 1, "probability": 0.5}],
                               [recs[0].__class__(**{**{f: getattr(recs[0], f) for f in recs[0].__slots__},
                                                     "patient_id": "S-1", "metadata": {}})], tmp_path / "x.parquet")


def test_cli_to_meds_from_meds_and_predict_format_meds(cohort, tmp_path, invoke, tiny_model_dir):
    write_cohort(cohort[:12], tmp_path / "c.jsonl")
    code, text = invoke(["data", "to-meds", "--cohort", tmp_path / "c.jsonl", "--out", tmp_path / "m"])
    assert code == 0 and "12 labels" in text, text
    code, text = invoke(["data", "to-meds", "--cohort", tmp_path / "c.jsonl", "--out", tmp_path / "m"])
    assert code == 1 and "--overwrite" in text
    code, text = invoke(["data", "from-meds", "--root", tmp_path / "m", "--labels",
                         tmp_path / "m" / "labels" / "adrd_5y.parquet", "--out", tmp_path / "back.jsonl"])
    assert code == 0 and "wrote 12 records of 12 subjects" in text, text
    assert sorted(map(_key, read_cohort(tmp_path / "back.jsonl"))) == sorted(map(_key, cohort[:12]))
    summary = json.loads((tmp_path / "back.jsonl.summary.json").read_text())["summary"]
    assert summary["records"] == 12
    # one summary for every importer: the same names and console tables as icl data from-omop (tests/data/test_omop.py)
    from icl_toolkit.data.summary import ImportSummary

    assert set(summary) == set(ImportSummary("", "").as_dict())
    assert "Rows read from" in text and "Cohort: 12 subjects" in text
    code, text = invoke(["predict", "--cohort", tmp_path / "back.jsonl", "--demos", "none", "--model",
                         tiny_model_dir, "--out", tmp_path / "p.jsonl", "--format", "meds", "--query-tokens", "96"])
    assert code == 0 and "meds-evaluation schema" in text, text
    table = pq.read_table(tmp_path / "p.meds.parquet")
    assert table.num_rows == 12 and table.column_names == ["subject_id", "prediction_time", "boolean_value",
                                                           "predicted_boolean_value", "predicted_boolean_probability"]


def test_data_split_keeps_a_subjects_records_together(multi, tmp_path, invoke):
    root, lab = multi
    write_cohort(list(open_meds(root, lab)), tmp_path / "c.jsonl")
    for seed in range(4):
        code, text = invoke(["data", "split", tmp_path / "c.jsonl", "--out-dir", tmp_path / f"s{seed}",
                             "--split", "train=0.5,test=0.5", "--seed", seed])
        assert code == 0, text
        where = {p.patient_id: name for name in ("train", "test") if (tmp_path / f"s{seed}" / f"{name}.jsonl").exists()
                 for p in read_cohort(tmp_path / f"s{seed}" / f"{name}.jsonl")}
        assert len({where[i] for i in ("7@2011-01-01", "7@2013-01-01", "7@2016-08-09")}) == 1
