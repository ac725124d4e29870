"""Losses (graph functions, numerically stable) and metrics (numpy, on predictions)."""
from __future__ import annotations

import numpy as np

from .. import api
from ..errors import GraphcError, ShapeError
from ..ir.types import fmt_shape
from ..trace import Tensor, user_location


def match_target(loss: str, pred, target):
    """The target, with the prediction's shape. Shapes must agree, except that a trailing axis
    of size 1 on one side only is dropped ((N, 1) predictions with (N,) targets, or the
    reverse): anything else would broadcast to (N, N) and give a wrong loss silently.
    Python scalars broadcast as usual."""
    if not isinstance(target, Tensor):
        if isinstance(target, (int, float)) and not isinstance(target, bool):
            return target
        target = api.as_tensor(target)
    p, t = tuple(pred.shape), tuple(target.shape)
    if p == t:
        return target
    if p == t + (1,) or p + (1,) == t:
        return api.reshape(target, pred.shape)
    raise ShapeError(f"{loss}: prediction shape {fmt_shape(p)} and target shape {fmt_shape(t)} "
                     f"differ", loc=user_location(),
                     fix="give targets of the prediction's shape (a trailing axis of size 1 may "
                         "differ)")


def mse(pred, target):
    d = pred - match_target("mse", pred, target)
    return api.mean(d * d)


def mae(pred, target):
    return api.mean(api.abs(pred - match_target("mae", pred, target)))


def binary_cross_entropy(prob, target, eps: float = 1e-7):
    """-mean(y log p + (1 - y) log(1 - p)), p clipped to [eps, 1 - eps] so log stays finite."""
    target = match_target("binary_cross_entropy", prob, target)
    p = api.minimum(api.maximum(prob, eps), 1.0 - eps)
    return -api.mean(target * api.log(p) + (1.0 - target) * api.log(1.0 - p))


def binary_cross_entropy_with_logits(logits, target):
    """max(z, 0) - z y + log(1 + exp(-|z|)): the same loss on logits, without overflow."""
    z = logits
    target = match_target("binary_cross_entropy_with_logits", logits, target)
    return api.mean(api.maximum(z, 0.0) - z * target + api.log(api.exp(-api.abs(z)) + 1.0))


def cross_entropy(logits, labels):
    """Softmax cross-entropy with integer class labels; log_softmax fuses into one row kernel."""
    if labels.dtype not in ("int32", "int64"):
        raise GraphcError(f"cross_entropy: labels must be int32 or int64 class indices, got "
                          f"{labels.dtype}", loc=user_location(),
                          fix="pass integer labels, e.g. y.astype(np.int64)")
    if logits.ndim == 0:
        raise ShapeError("cross_entropy: logits must have a class axis, got a 0-d tensor",
                         loc=user_location())
    rows = tuple(logits.shape[:-1])
    if tuple(labels.shape) == rows + (1,):
        labels = api.reshape(labels, rows)      # (N, 1) labels: one class index per row
    elif tuple(labels.shape) != rows:
        raise ShapeError(f"cross_entropy: labels of shape {fmt_shape(labels.shape)} do not fit "
                         f"logits of shape {fmt_shape(logits.shape)}: expected labels of shape "
                         f"{fmt_shape(rows)} (or {fmt_shape(rows + (1,))})",
                         loc=user_location(), fix="one integer class index per row of logits")
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
