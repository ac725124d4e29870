"""Losses (graph functions, numerically stable) and metrics (numpy, on predictions)."""
from __future__ import annotations

import numpy as np

from .. import api
from ..errors import GraphcError
from ..trace import user_location


def mse(pred, target):
    d = pred - target
    return api.mean(d * d)


def mae(pred, target):
    return api.mean(api.abs(pred - target))


def binary_cross_entropy(prob, target, eps: float = 1e-7):
    """-mean(y log p + (1 - y) log(1 - p)), p clipped to [eps, 1 - eps] so log stays finite."""
    p = api.minimum(api.maximum(prob, eps), 1.0 - eps)
    return -api.mean(target * api.log(p) + (1.0 - target) * api.log(1.0 - p))


def binary_cross_entropy_with_logits(logits, target):
    """max(z, 0) - z y + log(1 + exp(-|z|)): the same loss on logits, without overflow."""
    z = logits
    return api.mean(api.maximum(z, 0.0) - z * target + api.log(api.exp(-api.abs(z)) + 1.0))


def cross_entropy(logits, labels):
    """Softmax cross-entropy with integer class labels; log_softmax fuses into one row kernel."""
    if labels.dtype not in ("int32", "int64"):
        raise GraphcError(f"cross_entropy: labels must be int32 or int64 class indices, got "
                          f"{labels.dtype}", loc=user_location(),
                          fix="pass integer labels, e.g. y.astype(np.int64)")
    n_classes = logits.shape[-1]
    picked = api.sum(api.log_softmax(logits, -1) * api.one_hot(labels, n_classes, logits.dtype), -1)
    return -api.mean(picked)


LOSSES = {"mse": mse, "mae": mae, "binary_cross_entropy": binary_cross_entropy,
          "bce": binary_cross_entropy, "bce_with_logits": binary_cross_entropy_with_logits,
          "binary_cross_entropy_with_logits": binary_cross_entropy_with_logits,
          "cross_entropy": cross_entropy}


# ------------------------------------------------------------------ metrics (numpy)

def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose largest score is the label."""
    return float(np.mean(np.argmax(pred, axis=-1) == np.asarray(labels).reshape(-1)))


def binary_accuracy(prob: np.ndarray, target: np.ndarray, threshold: float = 0.5) -> float:
    return float(np.mean((np.asarray(prob) > threshold) == (np.asarray(target) > 0.5)))


def r2(pred: np.ndarray, target: np.ndarray) -> float:
    target = np.asarray(target, np.float64)
    ss_res = np.sum((target - pred) ** 2)
    ss_tot = np.sum((target - target.mean(axis=0)) ** 2)
    return float(1.0 - ss_res / ss_tot) if ss_tot > 0 else float("nan")


METRICS = {"accuracy": accuracy, "binary_accuracy": binary_accuracy, "r2": r2}
