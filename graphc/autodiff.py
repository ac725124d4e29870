"""grad / value_and_grad: reverse-mode differentiation as a graph-to-graph transform.

Calling the differentiated function inside a trace records the forward nodes, then walks them
backwards calling each op's `vjp` rule (declared with the op), which emits ordinary graph ops.
The gradient is therefore just more graph: it is fused and compiled with the forward pass, and
it can itself be differentiated (grad of grad).
"""
from __future__ import annotations

import numpy as np

from . import api
from .errors import GradError
from .ir.types import FLOATS, fmt_shape
from .ops.registry import OPS
from .trace import Tensor, TensorSpec, apply, cast, constant, tensor, user_location


def sum_to_shape(g: Tensor, shape) -> Tensor:
    """Undoes numpy broadcasting: sums g over the axes that broadcasting added or stretched."""
    shape = tuple(shape)
    if tuple(g.shape) == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, d in enumerate(shape) if d == 1 and g.shape[lead + i] != 1)
    summed = api.sum(g, axes, keepdims=True) if axes else g
    return api.reshape(summed, shape)


def zeros_like(x: Tensor) -> Tensor:
    return api.broadcast_to(constant(0, x.dtype), x.shape)


def _backward(y: Tensor, wrt: list[Tensor], start: int) -> list[Tensor]:
    graph = y.graph
    needs = {t.id for t in wrt}
    for node in graph.nodes[start:y.id + 1]:
        if node.dtype in FLOATS and any(i in needs for i in node.inputs):
            needs.add(node.id)
    cotangents: dict[int, Tensor] = {}
    if y.id in needs:
        cotangents[y.id] = api.broadcast_to(constant(1, y.dtype), y.shape)
    for node_id in range(y.id, start - 1, -1):
        if node_id not in cotangents:
            continue
        node = graph[node_id]
        op = OPS[node.op]
        if op.vjp is None:
            raise GradError(f"{node.op} is not differentiable (output {node.type})", op=node.op,
                            loc=node.loc, fix="wrap the value in graphc.stop_gradient if no "
                                              "gradient should flow through it")
        inputs = [Tensor(graph, i) for i in node.inputs]
        grads = op.vjp(cotangents[node_id], Tensor(graph, node_id), *inputs, **node.attrs)
        assert len(grads) == len(inputs), f"{node.op}: vjp returned {len(grads)} cotangents"
        for i, g in zip(node.inputs, grads):
            if g is None or i not in needs:
                continue
            g = cast(sum_to_shape(g, graph[i].shape), graph[i].dtype)
            cotangents[i] = api.add(cotangents[i], g) if i in cotangents else g
    return [cotangents[t.id] if t.id in cotangents else zeros_like(t) for t in wrt]


def value_and_grad(fn, argnums=0):
    """Returns f(*args) -> (fn(*args), gradient of fn's scalar output w.r.t. args[argnums]).

    `argnums` is an int (one gradient) or a tuple (a tuple of gradients). Works inside a trace
    (so it compiles: `graphc.compile(graphc.grad(loss), *specs)`) and on numpy arrays (traced
    and compiled on the fly).
    >>> dloss = graphc.grad(lambda w, x: graphc.sum((x @ w) ** 2))
    """
    single = isinstance(argnums, (int, np.integer))
    nums = (int(argnums),) if single else tuple(int(a) for a in argnums)

    def wrapped(*args):
        if not any(isinstance(a, Tensor) for a in args):
            return _eager(wrapped, args)
        for k in nums:
            if not -len(args) <= k < len(args):
                raise GradError(f"argnums {k} is out of range for {len(args)} arguments",
                                loc=user_location())
            a = args[k]
            if not isinstance(a, Tensor):
                raise GradError(f"argument {k} is a {type(a).__name__}, not a traced tensor; "
                                f"only tensor inputs can be differentiated", loc=user_location())
            if a.dtype not in FLOATS:
                raise GradError(f"argument {k} has dtype {a.dtype}: only float32/float64 "
                                f"inputs are differentiable", loc=user_location(),
                                fix="leave integer inputs (labels, indices) out of argnums")
        graph = next(a for a in args if isinstance(a, Tensor)).graph
        start = len(graph.nodes)
        y = fn(*args)
        if not isinstance(y, Tensor):
            raise GradError(f"the differentiated function must return one tensor, got "
                            f"{type(y).__name__}", loc=user_location())
        if y.ndim != 0 or y.dtype not in FLOATS:
            raise GradError(f"grad needs a scalar float output, got {y.dtype}{fmt_shape(y.shape)}",
                            loc=user_location(), fix="reduce the output, e.g. graphc.sum(y) or "
                                                     "graphc.mean(y)")
        grads = _backward(y, [args[k] for k in nums], start)
        return y, (grads[0] if single else tuple(grads))

    wrapped.__name__ = f"value_and_grad_{getattr(fn, '__name__', 'fn')}".replace("<lambda>", "lambda")
    wrapped.__wrapped__ = fn
    return wrapped


def grad(fn, argnums=0):
    """The gradient of a scalar function w.r.t. args[argnums]; see value_and_grad."""
    vg = value_and_grad(fn, argnums)

    def wrapped(*args):
        if not any(isinstance(a, Tensor) for a in args):
            return _eager(wrapped, args)
        return vg(*args)[1]

    wrapped.__name__ = f"grad_{getattr(fn, '__name__', 'fn')}".replace("<lambda>", "lambda")
    wrapped.__wrapped__ = fn
    return wrapped


def stop_gradient(x) -> Tensor:
    """x, with no gradient flowing back through it."""
    return apply("stop_gradient", [api.as_tensor(x)])


def _eager(fn, args):
    """Runs a traced function on numpy arrays: trace with their shapes, compile, call."""
    from .compiler import compile

    arrays = [np.asarray(a) for a in args]
    specs: list[TensorSpec] = [tensor(a.shape, a.dtype) for a in arrays]
    structure = []

    def flat(*ts):
        out = fn(*ts)
        leaves = []
        for item in (out if isinstance(out, tuple) else (out,)):
            group = item if isinstance(item, tuple) else (item,)
            structure.append(len(group) if isinstance(item, tuple) else None)
            leaves.extend(group)
        structure.append(isinstance(out, tuple))
        return tuple(leaves)

    results = compile(flat, *specs)(*arrays)
    *shape, is_tuple = structure
    out, pos = [], 0
    for n in shape:
        if n is None:
            out.append(results[pos])
            pos += 1
        else:
            out.append(tuple(results[pos:pos + n]))
            pos += n
    return tuple(out) if is_tuple else out[0]
