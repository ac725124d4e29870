"""Neural-network ONNX ops: matrix products, normalizations, softmax, convolution, pooling."""
from __future__ import annotations

from ... import api
from ..importer import onnx_op


@onnx_op("MatMul")
def _matmul(node, a, b):
    return api.matmul(node.tensor(a), node.tensor(b))


@onnx_op("Gemm")
def _gemm(node, a, b, c=None):
    a, b = node.tensor(a), node.tensor(b)
    if node.attr("transA", 0):
        a = api.transpose(a, (1, 0))
    if node.attr("transB", 0):
        b = api.transpose(b, (1, 0))
    out = api.matmul(a, b)
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    if alpha != 1.0:
        out = out * alpha
    if c is not None:
        c = node.tensor(c, out.dtype)
        out = out + (c * beta if beta != 1.0 else c)
    return out


@onnx_op("Softmax", "LogSoftmax")
def _softmax(node, x):
    fn = api.softmax if node.op_type == "Softmax" else api.log_softmax
    x = node.tensor(x)
    axis = node.attr("axis", -1 if node.opset >= 13 else 1)
    if node.opset >= 13:
        return fn(x, axis)
    # before opset 13: the input is flattened to 2-D at `axis`
    axis = axis % x.ndim
    shape = x.shape
    from ...ir.types import numel
    flat = api.reshape(x, (numel(shape[:axis]), numel(shape[axis:])))
    return api.reshape(fn(flat, -1), shape)
