"""Calibration in the report: ECE and Brier score before and after each ensemble's calibration, on the test split."""

from __future__ import annotations

import pandas as pd

from muratune.constants import PROB, PROB_UNCALIBRATED
from muratune.metrics import calibration_metrics
from muratune.report.experiment import Ensemble

CALIBRATION_COLUMNS = ("ensemble", "calibration", "ece_before", "ece_after", "brier_before", "brier_after")


def uncalibrated(studies: pd.DataFrame) -> pd.DataFrame:
    """The studies with their probability before calibration (the same studies where there was none)."""
    if PROB_UNCALIBRATED not in studies:
        return studies
    return studies.assign(**{PROB: studies[PROB_UNCALIBRATED]})


def calibration_table(ensembles: list[Ensemble]) -> pd.DataFrame:
    """One row per ensemble with test predictions: how it was calibrated, ECE and Brier before and after."""
    rows = []
    for ens in ensembles:
        if PROB not in ens.studies:
            continue
        calibration = ens.spec.calibration
        before = calibration_metrics(uncalibrated(ens.studies), "test")
        after = calibration_metrics(ens.studies, "test")
        rows.append(
            {
                "ensemble": ens.name,
                "calibration": f"{calibration.method} ({calibration.fitted_on})" if calibration else "none",
                "ece_before": before["test_ece"],
                "ece_after": after["test_ece"],
                "brier_before": before["test_brier"],
                "brier_after": after["test_brier"],
            }
        )
    return pd.DataFrame(rows, columns=list(CALIBRATION_COLUMNS))
