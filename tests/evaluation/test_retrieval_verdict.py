"""icl index eval's verdict: the retriever it would choose, whether the intervals separate it, against age alone."""

from __future__ import annotations

from icl_toolkit.evaluation.retrieval import RetrievalReport, verdict


def _report(rows, age):
    return RetrievalReport(
        rows=[{"retriever": name, "k": k, "auroc": a, "auroc_lo": lo, "auroc_hi": hi} for name, k, a, lo, hi in rows],
        references=[{"reference": "age only", "auroc": age[0], "auroc_lo": age[1], "auroc_hi": age[2]}],
        n_queries=200, cases=31, n_pool=1400)


def test_overlapping_intervals_do_not_choose_and_age_alone_is_named():
    """The demo's validation split as a user met it: prognostic last, every interval overlapping, age alone ahead."""
    report = _report([("dense", 4, 0.601, 0.50, 0.70), ("hybrid", 4, 0.651, 0.55, 0.75),
                      ("prognostic", 4, 0.523, 0.422, 0.634), ("hybrid", 16, 0.70, 0.6, 0.8)], (0.691, 0.60, 0.78))
    lines = verdict(report, default="prognostic")
    assert lines[0].startswith("verdict at k=4 on 200 patients (31 cases): hybrid has the highest neighbour vote")
    assert "overlaps those of dense" in lines[1] and "prognostic 0.523" in lines[1]
    assert "so they give no reason to change the default (prognostic)" in lines[1]
    assert "not distinguishable from it" in lines[2]


def test_a_clear_winner_is_chosen_and_standing_above_age_is_said():
    report = _report([("dense", 4, 0.58, 0.52, 0.64), ("prognostic", 4, 0.80, 0.75, 0.85)], (0.62, 0.55, 0.69))
    lines = verdict(report, k=5)                       # the evaluated k nearest to the one asked for
    assert "verdict at k=4" in lines[0] and "prognostic has the highest" in lines[0]
    assert "choose --retriever prognostic" in lines[1]
    assert "above it: the neighbours carry signal beyond age" in lines[2]
    below = _report([("dense", 4, 0.55, 0.50, 0.60)], (0.75, 0.70, 0.80))
    assert "below it" in verdict(below)[-1]
