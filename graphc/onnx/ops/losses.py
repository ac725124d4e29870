"""Loss ONNX ops: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss (its log-softmax,
then the same picking of each target's entry, weighting, ignoring and reduction)."""
from __future__ import annotations

import numpy as np

from ... import api
from ...ops.indexing import take, take_along_axis
from ...trace import constant
from ..importer import onnx_op


def _reduction(node) -> str:
    reduction = node.attr("reduction", "mean")
    if reduction not in ("none", "sum", "mean"):
        raise node.error(f"reduction {reduction!r} is not none, sum or mean")
    return reduction


def _picked_loss(node, log_prob, target, weight):
    """-log_prob[n, target[n, ...], ...] scaled by weight[target] (0 where the target is
    ignore_index), reduced: a mean divides by the summed weights."""
    if log_prob.ndim < 2:
        raise node.error(f"the input {tuple(log_prob.shape)} must be (N, C, ...)")
    target = node.tensor(target, "int64")
    if tuple(target.shape) != (log_prob.shape[0],) + tuple(log_prob.shape[2:]):
        raise node.error(f"target {tuple(target.shape)} must be the input "
                         f"{tuple(log_prob.shape)} without its class axis")
    dtype, classes = log_prob.dtype, log_prob.shape[1]
    ignore = node.attr("ignore_index")
    ignored = None if ignore is None else api.equal(target, constant(np.int64(ignore)))
    safe = target if ignored is None else api.where(ignored, constant(np.int64(0)), target)
    loss = -api.squeeze(take_along_axis(log_prob, api.expand_dims(safe, 1), 1), 1)
    scale = None
    if weight is not None:     # ONNX's reference clips targets into the weights' range
        scale = take(node.tensor(weight, dtype),
                     api.clip(safe, constant(np.int64(0)), constant(np.int64(classes - 1))),
                     axis=0)
    if ignored is not None:
        keep = api.where(ignored, constant(np.zeros((), dtype)), constant(np.ones((), dtype)))
        scale = keep if scale is None else scale * keep
    if scale is not None:
        loss = loss * scale
    reduction = _reduction(node)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return api.sum(loss)
    return api.sum(loss) / api.sum(scale) if scale is not None else api.mean(loss)


@onnx_op("NegativeLogLikelihoodLoss")
def _nll_loss(node, log_prob, target, weight=None):
    return _picked_loss(node, node.tensor(log_prob), target, weight)


@onnx_op("SoftmaxCrossEntropyLoss")
def _softmax_cross_entropy(node, scores, labels, weights=None):
    log_prob = api.log_softmax(node.tensor(scores), axis=1)
    return _picked_loss(node, log_prob, labels, weights), log_prob
