"""Neural-network ONNX ops: matrix products, normalizations, softmax, convolution, pooling."""
from __future__ import annotations

from ... import api
from ...trace import apply
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


def _hardmax(x, axis):
    """1 at the first largest entry along `axis`, 0 elsewhere (x's dtype)."""
    axis = axis % x.ndim
    best = api.argmax(x, axis, keepdims=True)
    n = x.shape[axis]
    shape = tuple(n if i == axis else 1 for i in range(x.ndim))
    index = api.reshape(apply("iota", [], dtype="int64", shape=(n,)), shape)
    return api.astype(api.equal(index, best), x.dtype)


ROW_OPS = {"Softmax": api.softmax, "LogSoftmax": api.log_softmax, "Hardmax": _hardmax}


@onnx_op(*ROW_OPS)
def _softmax(node, x):
    fn = ROW_OPS[node.op_type]
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
