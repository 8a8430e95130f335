"""Task metrics, from scikit-learn and SciPy; each returns a float (higher is better, but perplexity)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np


def accuracy(predictions: Sequence, references: Sequence) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(references, predictions))


def mcc(predictions: Sequence, references: Sequence) -> float:
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(references, predictions))


def f1(predictions: Sequence, references: Sequence) -> float:
    """Binary F1 of the positive class (label 1), GLUE's MRPC/QQP convention."""
    from sklearn.metrics import f1_score

    return float(f1_score(references, predictions, pos_label=1, zero_division=0.0))


def pearson(predictions: Sequence, references: Sequence) -> float:
    from scipy.stats import pearsonr

    return _correlation(pearsonr, predictions, references)


def spearman(predictions: Sequence, references: Sequence) -> float:
    from scipy.stats import spearmanr

    return _correlation(spearmanr, predictions, references)


def _correlation(fn, predictions, references) -> float:
    p, r = np.asarray(predictions, dtype=float), np.asarray(references, dtype=float)
    if p.std() == 0 or r.std() == 0:
        return 0.0  # a constant prediction carries no ranking; scipy would warn and return NaN
    return float(fn(p, r)[0])


def perplexity(total_nll: float, num_tokens: int) -> float:
    return math.exp(total_nll / max(num_tokens, 1))


# name -> function(predictions, references); perplexity is computed from summed log-likelihoods
METRICS: dict[str, Callable[[Sequence, Sequence], float]] = {
    "accuracy": accuracy,
    "accuracy_norm": accuracy,  # of the picks by length-normalised log-likelihood (decoders' option scoring)
    "mcc": mcc,
    "f1": f1,
    "pearson": pearson,
    "spearman": spearman,
}
LOWER_IS_BETTER = {"perplexity"}
KNOWN_METRICS = sorted([*METRICS, "perplexity"])
