"""bench/search_efficiency.py's method choice and report, on best-so-far curves written here."""

from __future__ import annotations

import pandas as pd
import pytest

from bench.search_efficiency import chosen_methods, report


def _curve(kappas: list[float]) -> pd.DataFrame:
    frame = pd.DataFrame({"epochs": range(1, len(kappas) + 1), "best": pd.Series(kappas).cummax()})
    return frame.assign(trial=[f"t{i // 2}" for i in range(len(kappas))])


def test_methods_are_chosen_by_letter_in_their_order() -> None:
    expected = ["a_muratune_tpe_asha_pruned", "c_random_no_stopping", "d_muratune_rung_tpe_asha"]
    assert chosen_methods("d, a,c") == expected
    with pytest.raises(SystemExit, match="--methods: unknown x"):
        chosen_methods("a,x")


def test_the_report_compares_the_rung_model_with_tpe_seed_by_seed(capsys: pytest.CaptureFixture[str]) -> None:
    tpe = [_curve([0.1, 0.2, 0.3, 0.4]), _curve([0.2, 0.2, 0.5, 0.5])]
    rung = [_curve([0.1, 0.3, 0.5, 0.5]), _curve([0.2, 0.2, 0.4, 0.4])]
    random = [_curve([0.1, 0.1, 0.2, 0.3]), _curve([0.1, 0.3, 0.3, 0.4])]
    names = chosen_methods("a,c,d")
    report(dict(zip(names, [tpe, random, rung], strict=True)), budget=4)
    printed = capsys.readouterr().out
    # final best: 0.5 - 0.4 and 0.4 - 0.5; mean best-so-far: (0.35 - 0.25) and (0.3 - 0.35)
    assert "(d) rung-tpe minus (a) tpe, per seed: final best +0.100, -0.100 (mean +0.000)" in printed
    assert "mean best-so-far +0.100, -0.050 (mean +0.025)" in printed
    assert "(c)'s final best 0.350 is reached after a=3, c=4, d=3 epochs" in printed
    assert "final best (a)" not in printed  # (b) was not run
