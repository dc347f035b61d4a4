"""The one ranking of trials and candidates: best first, a deterministic tie-break, the same in every stage."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from muratune.ensemble.select import BestSingle, TopKMean, ValPredictions, ranking
from muratune.ranking import best_first, rank_candidates, rank_trials
from muratune.report.experiment import Experiment
from muratune.report.leaderboard import TRIAL, build_entries
from muratune.schemas import GLOBAL_WEIGHTS


def _summary() -> pd.DataFrame:
    """Trials tied on kappa (broken by AUC, then by id), one failed, one without a kappa, in a shuffled order."""
    rows = [
        ("t5", "COMPLETE", 0.50, 0.70),
        ("t1", "PRUNED", math.nan, math.nan),
        ("t4", "COMPLETE", 0.60, 0.80),
        ("t9", "FAIL", 0.90, 0.95),
        ("t2", "COMPLETE", 0.60, 0.80),
        ("t3", "COMPLETE", 0.60, 0.85),
    ]
    return pd.DataFrame(rows, columns=["trial_id", "state", "best_val_kappa", "best_val_auc"])


def test_best_first_breaks_ties_by_the_second_score_then_by_id_and_puts_nan_last():
    ids = ["c", "a", "b", "d", "e"]
    order = best_first([0.5, 0.5, 0.5, math.nan, 0.7], ids, tie_break=[0.1, 0.2, 0.2, 0.9, math.nan])
    assert [ids[j] for j in order] == ["e", "a", "b", "c", "d"]


def test_the_ranking_does_not_depend_on_the_order_the_trials_come_in():
    summary = _summary()
    expected = ["t3", "t2", "t4", "t5", "t1"]  # t9 failed
    assert rank_trials(summary)["trial_id"].tolist() == expected
    for seed in range(5):
        shuffled = summary.sample(frac=1.0, random_state=seed)
        assert rank_trials(shuffled)["trial_id"].tolist() == expected


def test_a_summary_without_auc_ranks_by_kappa_then_id():
    summary = _summary().drop(columns="best_val_auc")
    assert rank_trials(summary)["trial_id"].tolist() == ["t2", "t3", "t4", "t5", "t1"]


def test_candidates_rank_by_kappa_with_loss_breaking_ties_or_by_loss_alone():
    ids = ["trial_b", "trial_a", "trial_c"]
    kappas, losses = [0.4, 0.4, 0.3], [0.6, 0.6, 0.2]
    assert [ids[j] for j in rank_candidates(kappas, losses, ids, "kappa")] == ["trial_a", "trial_b", "trial_c"]
    assert [ids[j] for j in rank_candidates(kappas, losses, ids, "loss")] == ["trial_c", "trial_a", "trial_b"]


def test_identical_candidates_are_chosen_by_name_whatever_their_order():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    probs = np.clip(labels * 0.6 + rng.random(40) * 0.4, 0, 1)
    studies = pd.DataFrame({"study_path": [f"s{i}" for i in range(40)], "body_part": "XR_HAND", "label": labels})
    for names in (["trial_b", "trial_a"], ["trial_a", "trial_b"]):
        preds = ValPredictions(studies, np.stack([probs, probs], axis=1), names)
        assert names[ranking(preds)[0]] == "trial_a"
        assert names[int(np.argmax(BestSingle().select(preds)[GLOBAL_WEIGHTS]))] == "trial_a"
        top = TopKMean(k=1, rank_by="loss").select(preds)[GLOBAL_WEIGHTS]
        assert names[int(np.argmax(top))] == "trial_a"


@pytest.mark.parametrize("top", [2, 10])
def test_the_leaderboard_lists_trials_in_the_refit_order(tmp_path: Path, top: int):
    summary = _summary().assign(time_s=0.0, epochs=1, best_epoch=1)
    exp = Experiment(path=tmp_path, name="x", config={}, summary=summary)
    trials = [e.name.removeprefix("trial ") for e in build_entries(exp, top=top, replicates=10) if e.kind == TRIAL]
    assert trials == rank_trials(summary)["trial_id"].head(top).tolist()
