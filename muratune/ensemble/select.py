"""Ensemble selection strategies over the candidates' internal-validation study probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from muratune.constants import BODY_PART, IMAGE_PATH, LABEL, STUDY_PATH
from muratune.errors import UserError
from muratune.metrics import kappa, log_loss
from muratune.ranking import rank_candidates
from muratune.schemas import GLOBAL_WEIGHTS, STRATEGIES

Weights = dict[str, np.ndarray]


@dataclass
class ValPredictions:
    """The candidates' internal-validation predictions, aligned on the same studies.

    Attributes:
        studies: one row per study (``study_path``, ``body_part``, ``label``).
        probs: ``n_studies x n_candidates`` study probabilities (mean of view probabilities).
        names: one name per candidate (column of ``probs``).
    """

    studies: pd.DataFrame
    probs: np.ndarray
    names: list[str]

    def subset(self, mask: np.ndarray) -> ValPredictions:
        """The same candidates on the studies where ``mask`` is true."""
        return ValPredictions(self.studies[mask].reset_index(drop=True), self.probs[mask], self.names)

    @property
    def labels(self) -> np.ndarray:
        """Study labels (1 = abnormal)."""
        return self.studies[LABEL].to_numpy(dtype=int)


def align_image_predictions(frames: Sequence[pd.DataFrame], names: Sequence[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Align image-level predictions of several candidates on the same images.

    Args:
        frames: per candidate, ``image_path, study_path, body_part, label, prob`` rows.
        names: candidate names, for error messages.

    Returns:
        The image rows (sorted by ``image_path``) and an ``n_images x n_candidates`` probability matrix.

    Raises:
        UserError: the candidates were validated on different images (different split settings).
    """
    sorted_frames = [frame.sort_values(IMAGE_PATH).reset_index(drop=True) for frame in frames]
    first = sorted_frames[0]
    for name, frame in zip(names[1:], sorted_frames[1:], strict=True):
        same = len(frame) == len(first) and (frame[IMAGE_PATH].to_numpy() == first[IMAGE_PATH].to_numpy()).all()
        if not same:
            raise UserError(
                f"{name}: its internal-validation images differ from {names[0]}'s ({len(frame)} vs {len(first)} "
                "images); candidates must share data.val_fraction, data.split_seed and the dataset"
            )
    probs = np.stack([frame["prob"].to_numpy(dtype=float) for frame in sorted_frames], axis=1)
    return first[[IMAGE_PATH, STUDY_PATH, BODY_PART, LABEL]].copy(), probs


def study_matrix(images: pd.DataFrame, probs: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """Average image probabilities (one column per candidate) into study probabilities, ignoring NaN views.

    Returns:
        One row per study (first-appearance order: ``study_path, body_part, label, n_views``) and the
        ``n_studies x n_candidates`` matrix.
    """
    columns = [f"c{j}" for j in range(probs.shape[1])]
    frame = pd.concat(
        [images[[STUDY_PATH, BODY_PART, LABEL]].reset_index(drop=True), pd.DataFrame(probs, columns=columns)], axis=1
    )
    grouped = frame.groupby(STUDY_PATH, sort=False)
    meta = grouped.agg(body_part=(BODY_PART, "first"), label=(LABEL, "first")).reset_index()
    meta["n_views"] = grouped[columns[0]].count().to_numpy() if columns else grouped.size().to_numpy()
    return meta, grouped[columns].mean().to_numpy(dtype=float)


def score(labels: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """Selection score: (study kappa at 0.5, minus log loss); larger is better, log loss breaks ties."""
    return kappa(labels, probs >= 0.5), -log_loss(labels, probs)


def ranking(preds: ValPredictions, rank_by: str = "kappa") -> list[int]:
    """Candidate indices, best first: by study kappa at 0.5 (lower log loss breaks ties) or by log loss, then name.

    The one ranking of `muratune.ranking.rank_candidates`.
    """
    labels = preds.labels
    scores = [score(labels, preds.probs[:, j]) for j in range(len(preds.names))]
    return rank_candidates([s[0] for s in scores], [-s[1] for s in scores], preds.names, rank_by)


def weighted(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean of candidate probabilities (rows of ``probs``)."""
    return probs @ weights / weights.sum()


def _one_hot(size: int, index: int) -> np.ndarray:
    weights = np.zeros(size)
    weights[index] = 1.0
    return weights


class BestSingle:
    """The candidate with the best internal-validation study kappa (log loss breaks ties)."""

    name = "best-single"

    def select(self, preds: ValPredictions) -> Weights:
        """Weight 1 for the best candidate."""
        return {GLOBAL_WEIGHTS: _one_hot(len(preds.names), ranking(preds)[0])}


@dataclass
class TopKMean:
    """Plain mean of the top ``k`` candidates, ranked by internal-validation study kappa or log loss."""

    k: int = 5
    rank_by: str = "kappa"
    name: str = "top-k-mean"

    def select(self, preds: ValPredictions) -> Weights:
        """Equal weights for the top ``k``."""
        weights = np.zeros(len(preds.names))
        weights[ranking(preds, self.rank_by)[: self.k]] = 1.0
        return {GLOBAL_WEIGHTS: weights}


@dataclass
class Greedy:
    """Caruana et al. (2004) ensemble selection: forward selection with replacement, started from the best single.

    Each step adds the candidate that maximises study kappa of the running mean (log loss breaks ties), until
    ``k`` picks; the best prefix wins, so a step that lowers the score is never kept.
    """

    k: int = 5
    name: str = "greedy"

    def select(self, preds: ValPredictions) -> Weights:
        """Weights proportional to how often each candidate was picked."""
        return {GLOBAL_WEIGHTS: greedy_counts(preds.labels, preds.probs, self.k)}


def greedy_counts(labels: np.ndarray, probs: np.ndarray, k: int) -> np.ndarray:
    """Pick counts of Caruana's forward selection with replacement (best prefix of at most ``k`` picks)."""
    n = probs.shape[1]
    scores = [score(labels, probs[:, j]) for j in range(n)]
    first = max(range(n), key=lambda j: (scores[j], -j))
    counts = _one_hot(n, first)
    total = probs[:, first].copy()
    best_counts, best_score = counts.copy(), scores[first]
    for picks in range(2, k + 1):
        trial = [score(labels, (total + probs[:, j]) / picks) for j in range(n)]
        pick = max(range(n), key=lambda j: (trial[j], -j))
        counts[pick] += 1
        total += probs[:, pick]
        if trial[pick] > best_score:
            best_counts, best_score = counts.copy(), trial[pick]
    return best_counts


@dataclass
class GreedyPerBodyPart:
    """Greedy selection run separately on each body part's studies; the global greedy covers unseen parts."""

    k: int = 5
    name: str = "greedy-per-body-part"

    def select(self, preds: ValPredictions) -> Weights:
        """Global weights under ``all`` plus one weight vector per body part of the validation studies."""
        weights = {GLOBAL_WEIGHTS: greedy_counts(preds.labels, preds.probs, self.k)}
        parts = preds.studies[BODY_PART].to_numpy()
        for part in sorted(set(parts)):
            sub = preds.subset(parts == part)
            weights[str(part)] = greedy_counts(sub.labels, sub.probs, self.k)
        return weights


def create_strategy(
    name: str, k: int = 5, rank_by: str = "kappa"
) -> BestSingle | TopKMean | Greedy | GreedyPerBodyPart:
    """Build a strategy by its name (see ``STRATEGIES``)."""
    if name == "best-single":
        return BestSingle()
    if name == "top-k-mean":
        return TopKMean(k, rank_by)
    if name == "greedy":
        return Greedy(k)
    if name == "greedy-per-body-part":
        return GreedyPerBodyPart(k)
    raise UserError(f"--strategy {name!r}: unknown; choose from {', '.join(STRATEGIES)}")


def weights_for(weights: Weights, body_parts: Sequence[str | None]) -> np.ndarray:
    """One weight row per item: its body part's weights, else the global ones."""
    rows = [weights.get(part or GLOBAL_WEIGHTS, weights[GLOBAL_WEIGHTS]) for part in body_parts]
    return np.stack(rows) if rows else np.zeros((0, len(weights[GLOBAL_WEIGHTS])))


def combine(probs: np.ndarray, body_parts: Sequence[str | None], weights: Weights) -> np.ndarray:
    """Per-row weighted mean of candidate probabilities, with the weights of each row's body part.

    Candidates with zero weight are ignored (even if NaN); a row is NaN when a weighted candidate is NaN.
    """
    rows = weights_for(weights, body_parts)
    used = rows > 0
    out = np.sum(np.where(used, np.nan_to_num(probs) * rows, 0.0), axis=1) / rows.sum(axis=1)
    out[np.any(used & np.isnan(probs), axis=1)] = np.nan
    return out
