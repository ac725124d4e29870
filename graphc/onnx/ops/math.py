"""Elementwise ONNX ops: arithmetic, comparisons, logic, activations, casts."""
from __future__ import annotations

import numpy as np

from ... import api
from ..importer import DTYPES, is_tensor, onnx_op
from .common import SIZE_OPS, all_known, is_sizes, simplify_sizes


def _int_divide(a, b):
    """ONNX Div on integers truncates toward zero (C semantics), as its reference does."""
    q = np.trunc(np.true_divide(a, b, where=b != 0, out=np.zeros(np.broadcast(a, b).shape)))
    return q.astype(np.result_type(a, b))


def _binary(op_type, graph_fn, numpy_fn):
    @onnx_op(op_type)
    def handler(node, a, b):
        if all_known(a, b):
            if is_sizes(a) or is_sizes(b):
                if op_type in SIZE_OPS:
                    try:
                        return simplify_sizes(np.asarray(SIZE_OPS[op_type](a, b)))
                    except ValueError:
                        pass      # (only the run-time sizes tell: computed in the graph)
            else:
                return np.asarray(numpy_fn(np.asarray(a), np.asarray(b)))
        return graph_fn(node.tensor(a), node.tensor(b))
    return handler


def _np_div(a, b):
    if a.dtype.kind in "iu":
        return _int_divide(a, b)
    return (a / b).astype(a.dtype)


for _t, _g, _n in [
    ("Add", api.add, np.add), ("Sub", api.subtract, np.subtract),
    ("Mul", api.multiply, np.multiply), ("Div", api.divide, _np_div),
    ("Equal", api.equal, np.equal), ("Less", api.less, np.less),
    ("Greater", api.greater, np.greater), ("LessOrEqual", api.less_equal, np.less_equal),
    ("GreaterOrEqual", api.greater_equal, np.greater_equal),
    ("And", api.logical_and, np.logical_and), ("Or", api.logical_or, np.logical_or),
]:
    _binary(_t, _g, _n)


@onnx_op("Pow")
def _pow(node, a, b):
    if all_known(a, b) and not (is_sizes(a) or is_sizes(b)):
        return np.power(a, b).astype(np.asarray(a).dtype)
    a = node.tensor(a)
    return api.power(a, node.tensor(b, a.dtype))   # the result has the base's dtype


@onnx_op("Max", "Min", "Sum", "Mean")
def _variadic(node, *xs):
    fn = {"Max": api.maximum, "Min": api.minimum, "Sum": api.add, "Mean": api.add}[node.op_type]
    out = node.tensor(xs[0])
    for x in xs[1:]:
        out = fn(out, node.tensor(x))
    if node.op_type == "Mean":
        out = api.divide(out, float(len(xs)))
    return out


def _unary(op_type, graph_fn):
    @onnx_op(op_type)
    def handler(node, x):
        return graph_fn(node.tensor(x))
    return handler


for _t, _g in [
    ("Relu", api.relu), ("Tanh", api.tanh), ("Sigmoid", api.sigmoid), ("Exp", api.exp),
    ("Log", api.log), ("Sqrt", api.sqrt), ("Abs", api.abs), ("Erf", api.erf), ("Sin", api.sin),
    ("Cos", api.cos), ("Softplus", api.softplus), ("Not", api.logical_not),
    ("Reciprocal", lambda x: api.divide(1.0, x)),
]:
    _unary(_t, _g)


@onnx_op("Neg")
def _neg(node, x):
    if all_known(x):
        return simplify_sizes(np.asarray(SIZE_OPS["Neg"](x))) if is_sizes(x) else -np.asarray(x)
    return api.negative(x)


@onnx_op("LeakyRelu")
def _leaky_relu(node, x):
    alpha = node.attr("alpha", 0.01)
    return api.where(x >= 0.0, x, x * alpha)


@onnx_op("Gelu")
def _gelu(node, x):
    return api.gelu(x, approximate=node.attr("approximate", "none") == "tanh")


@onnx_op("Clip")
def _clip(node, x, lo=None, hi=None):
    if node.opset < 11:
        lo, hi = node.attr("min"), node.attr("max")
    x = node.tensor(x)
    if lo is not None:
        x = api.maximum(x, node.tensor(lo, x.dtype))
    if hi is not None:
        x = api.minimum(x, node.tensor(hi, x.dtype))
    return x


@onnx_op("Where")
def _where(node, c, a, b):
    if all_known(c, a, b) and not is_sizes(c):
        return simplify_sizes(np.asarray(np.where(c, a, b)))
    return api.where(node.tensor(c), node.tensor(a), node.tensor(b))


@onnx_op("Cast")
def _cast(node, x):
    to = node.attr("to")
    if to not in DTYPES:
        from ..importer import ELEM_NAMES
        raise node.error(f"casting to {ELEM_NAMES.get(to, to)} is not supported (graphc "
                         f"computes in {', '.join(DTYPES.values())})")
    if all_known(x) and not is_sizes(x):
        return np.asarray(x).astype(DTYPES[to])
    if is_sizes(x) and DTYPES[to] in ("int32", "int64"):
        return x     # (sizes stay known; as values they are int64)
    x = node.tensor(x)
    return x if x.dtype == DTYPES[to] else api.astype(x, DTYPES[to])


@onnx_op("Identity", "Dropout")
def _identity(node, x, *rest):
    if node.op_type == "Dropout" and node.num_outputs > 1:   # (inference: the mask is all true)
        mask = api.broadcast_to(node.tensor(np.array(True)), x.shape) if is_tensor(x) else \
            np.ones(np.shape(x), bool)
        return [x, mask]
    return x
