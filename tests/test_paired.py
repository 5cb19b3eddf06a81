"""Paired comparisons of two models on the same questions (``evals.paired``): the gain, its interval,
the questions that moved, and which questions are compared."""

import json

import pytest

from dgpo_agent.errors import DGPOError
from dgpo_agent.evals.paired import compare, paired_gain
from dgpo_agent.evals.report import comparison_table


def _scores(values):
    return {f"q{i:03d}": float(v) for i, v in enumerate(values)}


def test_gain_counts_and_an_interval_around_it():
    before = _scores([1] * 40 + [0] * 60)
    after = _scores([1] * 35 + [0] * 5 + [1] * 15 + [0] * 45)  # 5 lost, 15 won
    result = paired_gain(before, after)
    assert (result["n"], result["better"], result["worse"]) == (100, 15, 5)
    assert (result["reference_mean"], result["model_mean"], result["gain"]) == (0.4, 0.5, 0.1)
    assert result["low"] < result["gain"] < result["high"]
    assert result["low"] > 0  # 15 against 5 on 100 questions is a difference
    assert paired_gain(before, after) == result  # seeded: reports are byte-stable


def test_churn_that_cancels_out_is_no_evidence():
    before = _scores([1] * 30 + [0] * 30)
    after = _scores([0] * 30 + [1] * 30)  # the same EM, every question changed
    result = paired_gain(before, after)
    assert result["gain"] == 0 and (result["better"], result["worse"]) == (30, 30)
    assert result["low"] < 0 < result["high"]


def test_identical_models_have_a_zero_width_interval():
    scores = _scores([1, 0, 1, 1])
    assert {k: paired_gain(scores, scores)[k] for k in ("gain", "low", "high", "better", "worse")} == {
        "gain": 0, "low": 0, "high": 0, "better": 0, "worse": 0}


def test_the_pairing_is_by_question_not_by_order():
    before, after = _scores([1, 0, 0, 0]), _scores([1, 1, 0, 0])
    shuffled = dict(reversed(list(after.items())))
    assert paired_gain(before, shuffled) == paired_gain(before, after)


@pytest.mark.parametrize("before, after, message", [
    (_scores([1, 0]), _scores([1, 0, 1]), r"scored on different questions \(1 scored for one only\)"),
    ({}, {}, "no questions to compare"),
])
def test_unpaired_scores_are_refused(before, after, message):
    with pytest.raises(DGPOError, match=message):
        paired_gain(before, after)


def _trajectories(path, scores):
    path.write_text("".join(json.dumps({"id": q, "scores": {"em": s}}) + "\n" for q, s in scores.items()))
    return path


def test_compare_uses_the_questions_both_were_scored_on(tmp_path):
    full_before = _scores([1, 0, 0, 1, 0, 0])
    files = {
        "start": _trajectories(tmp_path / "start.jsonl", full_before),
        "trained": _trajectories(tmp_path / "trained.jsonl", _scores([1, 1, 1, 1, 0, 0])),
        "base": _trajectories(tmp_path / "base.jsonl", dict(list(_scores([0, 0, 0]).items()))),  # tested on fewer
        "shipped": tmp_path / "shipped.jsonl",  # scored elsewhere: no trajectory file
    }
    ids = list(full_before)[:5]  # this evaluation's questions: the file holds one more
    result = compare([("trained", "start"), ("start", "base"), ("trained", "shipped")], files, ids)
    assert [(c["model"], c["reference"], c["n"], c["better"], c["worse"]) for c in result] == [
        ("trained", "start", 5, 2, 0), ("start", "base", 3, 1, 0)]
    table = comparison_table(result)
    assert table[2].startswith("| trained | start | 0.400 → 0.800 | +0.400 |")
    assert "95% percentile bootstrap" in table[-1]



def test_resamples_are_drawn_in_batches_that_bound_memory(monkeypatch):
    """However many questions, at most ``BATCH_VALUES`` resampled values are held at once (a Search-R1
    test set has tens of thousands of questions: all resamples at once would take gigabytes)."""
    import scipy.stats

    from dgpo_agent.evals import paired

    batches = []
    real = scipy.stats.bootstrap

    def recording(*args, **kwargs):
        batches.append(kwargs.get("batch"))
        return real(*args, **kwargs)

    before = _scores([1] * 40 + [0] * 60)
    after = _scores([1] * 35 + [0] * 5 + [1] * 15 + [0] * 45)
    whole = paired_gain(before, after)
    monkeypatch.setattr(scipy.stats, "bootstrap", recording)
    monkeypatch.setattr(paired, "BATCH_VALUES", 1_000)
    batched = paired_gain(before, after)
    assert batches == [10]  # resamples of the 100 questions per batch
    assert batched["gain"] == whole["gain"] and batched["low"] < batched["gain"] < batched["high"]
    assert abs(batched["low"] - whole["low"]) < 0.02 and abs(batched["high"] - whole["high"]) < 0.02
