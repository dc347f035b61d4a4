"""Temperature scaling of an ensemble's study probability, per body part, fitted on held-out predictions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit

from muratune.constants import BODY_PART, LABEL
from muratune.schemas import GLOBAL_WEIGHTS, CalibrationSpec

MIN_STUDIES = 20  # a body part with fewer held-out studies (or one class) uses the global temperature
LOG_T_BOUNDS = (-3.0, 3.0)  # temperatures between e^-3 and e^3
EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] before the logit while fitting
BOUND_MARGIN = 1e-3  # a fitted log T this close to the lower bound counts as at it (`at_lower_bound`)


def scale(probs: np.ndarray, temperature: float | np.ndarray) -> np.ndarray:
    """``sigmoid(logit(p) / T)``: monotone, keeps 0, 0.5, 1 and NaN."""
    return expit(logit(np.asarray(probs, dtype=float)) / temperature)


def logit_log_loss(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy computed from logits, unclipped: it keeps falling for separable data as T -> 0."""
    signs = 2.0 * np.asarray(labels, dtype=float) - 1.0
    return float(np.mean(np.logaddexp(0.0, -signs * logits)))


def clipped_logits(probs: np.ndarray) -> np.ndarray:
    """``logit(p)`` of probabilities clipped to ``[EPS, 1 - EPS]``: finite for 0 and 1, for fitting."""
    return logit(np.clip(np.asarray(probs, dtype=float), EPS, 1 - EPS))


def fit_temperature(labels: np.ndarray, probs: np.ndarray) -> float:
    """The temperature minimising the log loss of ``scale(probs, T)`` (bounded search on log T)."""
    labels = np.asarray(labels, dtype=float)
    logits = clipped_logits(probs)
    result = minimize_scalar(
        lambda log_t: logit_log_loss(labels, logits / np.exp(log_t)), bounds=LOG_T_BOUNDS, method="bounded"
    )
    return float(np.exp(result.x))


def at_lower_bound(temperature: float) -> bool:
    """Whether a fitted temperature sits at the search's lower bound: no optimum inside it, so no estimate.

    The log loss was still falling there, which happens when the held-out predictions separate the classes (a body
    part of a few dozen studies that the models happen to get all right out of fold): the fit would sharpen them
    without limit. (At the upper bound the predictions carry no information, and flattening them is the answer.)
    """
    return float(np.log(temperature)) <= LOG_T_BOUNDS[0] + BOUND_MARGIN


def _fittable(labels: np.ndarray) -> bool:
    return len(labels) >= MIN_STUDIES and 0 < labels.sum() < len(labels)


def fit_calibration(studies: pd.DataFrame, probs: np.ndarray, fitted_on: str) -> CalibrationSpec:
    """Fit one temperature for all studies and one per body part with enough studies of both classes.

    A body part whose fitted temperature sits at the lower bound (`at_lower_bound`) uses the global one, and a global
    one at the lower bound is 1 (the identity): on the hard refit benchmark one body part's out-of-fold predictions
    gave e^-3, which made its test predictions near 0 or 1 and the test log loss 0.71 against 0.51 with the global
    temperature (docs/calibration.md).

    Args:
        studies: held-out studies with ``body_part`` and ``label``.
        probs: the ensemble's (uncalibrated) study probability of each row; NaN rows are ignored.
        fitted_on: ``internal-val`` (search ensembles) or ``out-of-fold`` (cv ensembles).
    """
    known = ~np.isnan(np.asarray(probs, dtype=float))
    labels = studies[LABEL].to_numpy(dtype=float)[known]
    parts = studies[BODY_PART].to_numpy()[known]
    probs = np.asarray(probs, dtype=float)[known]
    overall = fit_temperature(labels, probs) if _fittable(labels) else 1.0
    temperature = {GLOBAL_WEIGHTS: 1.0 if at_lower_bound(overall) else overall}
    for part in sorted(set(parts)):
        mask = parts == part
        if _fittable(labels[mask]):
            fitted = fit_temperature(labels[mask], probs[mask])
            if not at_lower_bound(fitted):
                temperature[str(part)] = fitted
    return CalibrationSpec(method="temperature", fitted_on=fitted_on, temperature=temperature)  # type: ignore[arg-type]


def temperature_of(calibration: CalibrationSpec | None, body_part: str | None) -> float:
    """A body part's temperature (1, the identity, without calibration)."""
    if calibration is None:
        return 1.0
    return calibration.temperature.get(body_part or GLOBAL_WEIGHTS, calibration.temperature[GLOBAL_WEIGHTS])


def calibrate(probs: np.ndarray, body_parts: Sequence[str | None], calibration: CalibrationSpec | None) -> np.ndarray:
    """Calibrated study probabilities: each row scaled with its body part's temperature."""
    probs = np.asarray(probs, dtype=float)
    if calibration is None:
        return probs.copy()
    temperatures = np.array([temperature_of(calibration, part) for part in body_parts], dtype=float)
    return scale(probs, temperatures)


def calibrated_thresholds(thresholds: dict[str, float], calibration: CalibrationSpec | None) -> dict[str, float]:
    """Thresholds mapped through the same calibration, so ``p >= t`` exactly when ``calibrate(p) >= calibrate(t)``."""
    return {part: float(scale(np.array([t]), temperature_of(calibration, part))[0]) for part, t in thresholds.items()}
