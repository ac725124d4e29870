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
from .ops.registry import LOOP, OPS, RESULT
from .trace import Tensor, TensorSpec, apply, cast, constant, tensor, user_location
from .tree import flatten, leaf_paths, path_str, tree_map, unflatten


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
    return backward([(y, api.broadcast_to(constant(1, y.dtype), y.shape))], wrt, start)


def backward(seeds: list[tuple[Tensor, Tensor]], wrt: list[Tensor], start: int) -> list[Tensor]:
    """The cotangents of `wrt`, given (value, cotangent) pairs, through the nodes from `start`
    on (a vector-Jacobian product; grad seeds its scalar output with 1).

    A loop node has several results: their cotangents are collected (keyed by result index)
    and handed to the loop's vjp rule as one dict when the walk reaches the loop node.
    """
    graph = wrt[0].graph if wrt else seeds[0][0].graph
    end = max((t.id for t, _ in seeds), default=start - 1)
    needs = {t.id for t in wrt}
    for node in graph.nodes[start:end + 1]:
        carries = node.dtype in FLOATS or OPS[node.op].kind == LOOP
        if carries and any(i in needs for i in node.inputs):
            needs.add(node.id)
    cotangents: dict[int, Tensor | None] = {}
    for t, g in seeds:
        if t.id in needs:
            cotangents[t.id] = api.add(cotangents[t.id], g) if t.id in cotangents else g
    parts: dict[int, dict[int, Tensor]] = {}   # loop node -> result index -> cotangent
    for node_id in range(end, start - 1, -1):
        if node_id not in cotangents:
            continue
        node = graph[node_id]
        op = OPS[node.op]
        if op.kind == RESULT:
            loop = node.inputs[0]
            parts.setdefault(loop, {})[node.attrs["index"]] = cotangents[node_id]
            cotangents.setdefault(loop, None)
            continue
        if op.vjp is None:
            raise GradError(f"{node.op} is not differentiable (output {node.type})", op=node.op,
                            loc=node.loc, fix="wrap the value in graphc.stop_gradient if no "
                                              "gradient should flow through it")
        inputs = [Tensor(graph, i) for i in node.inputs]
        g = parts.pop(node_id, {}) if op.kind == LOOP else cotangents[node_id]
        grads = op.vjp(g, Tensor(graph, node_id), *inputs, **node.attrs)
        if len(grads) != len(inputs):
            raise GradError(f"{node.op}: its vjp rule returned {len(grads)} cotangents for "
                            f"{len(inputs)} inputs (a bug in the op's declaration)", op=node.op,
                            loc=node.loc)
        for i, g in zip(node.inputs, grads):
            if g is None or i not in needs:
                continue
            g = cast(sum_to_shape(g, graph[i].shape), graph[i].dtype)
            cotangents[i] = api.add(cotangents[i], g) if i in cotangents else g
    return [cotangents[t.id] if cotangents.get(t.id) is not None else zeros_like(t)
            for t in wrt]


def _argnums(argnums) -> tuple[bool, tuple[int, ...]]:
    if isinstance(argnums, (int, np.integer)) and not isinstance(argnums, bool):
        return True, (int(argnums),)
    if isinstance(argnums, (tuple, list)) and all(
            isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in argnums):
        return False, tuple(int(a) for a in argnums)
    raise GradError(f"argnums must be an int or a tuple of ints, got {argnums!r}",
                    loc=user_location())


def _is_traced(args) -> bool:
    return any(isinstance(leaf, Tensor) for leaf in flatten(args)[0])


def value_and_grad(fn, argnums=0, has_aux: bool = False):
    """Returns f(*args) -> (fn(*args), gradient of fn's scalar output w.r.t. args[argnums]).

    `argnums` is an int (one gradient) or a tuple (a tuple of gradients). An argument may be
    a pytree (a dict of parameters, say): its gradient has the same structure. With
    `has_aux=True`, fn returns (value, aux) and the result is ((value, aux), grads), as in JAX.
    Works inside a trace (so it compiles: `graphc.compile(graphc.value_and_grad(loss), *specs)`)
    and on numpy arrays (traced and compiled on the fly).
    >>> vg = graphc.value_and_grad(lambda p, x: graphc.sum((x @ p["w"]) ** 2))
    >>> loss, grads = vg({"w": w}, x)          # grads == {"w": dloss/dw}
    """
    single, nums = _argnums(argnums)

    def wrapped(*args):
        if not _is_traced(args):
            return _eager(wrapped, args)
        wrt, trees = [], []
        for k in nums:
            if not -len(args) <= k < len(args):
                raise GradError(f"argnums {k} is out of range for {len(args)} arguments",
                                loc=user_location())
            leaves, tree = flatten(args[k])
            for leaf, path in zip(leaves, leaf_paths(tree)):
                where = path_str(path, f"argument {k}")
                if not isinstance(leaf, Tensor):
                    raise GradError(f"{where} is a {type(leaf).__name__}, not a traced tensor; "
                                    f"only tensor inputs can be differentiated",
                                    loc=user_location())
                if leaf.dtype not in FLOATS:
                    raise GradError(f"{where} has dtype {leaf.dtype}: only float32/float64 "
                                    f"inputs are differentiable", loc=user_location(),
                                    fix="leave integer inputs (labels, indices) out of argnums")
            wrt.extend(leaves)
            trees.append(tree)
        graph = next(leaf for leaf in flatten(args)[0] if isinstance(leaf, Tensor)).graph
        start = len(graph.nodes)
        out = fn(*args)
        if has_aux:
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise GradError(f"with has_aux=True the function must return (value, aux), got "
                                f"{type(out).__name__}", loc=user_location())
            y, aux = out
        else:
            y = out
        if not isinstance(y, Tensor):
            raise GradError(f"the differentiated function must return one tensor"
                            f"{' (and aux)' if has_aux else ''}, got {type(y).__name__}",
                            loc=user_location(),
                            fix="return a scalar; pass has_aux=True to return (value, aux)")
        if y.ndim != 0 or y.dtype not in FLOATS:
            raise GradError(f"grad needs a scalar float output, got {y.dtype}{fmt_shape(y.shape)}",
                            loc=user_location(), fix="reduce the output, e.g. graphc.sum(y) or "
                                                     "graphc.mean(y)")
        flat = _backward(y, wrt, start)
        grads, pos = [], 0
        for tree in trees:
            grads.append(unflatten(tree, flat[pos:pos + tree.num_leaves]))
            pos += tree.num_leaves
        value = (y, aux) if has_aux else y
        return value, (grads[0] if single else tuple(grads))

    wrapped.__name__ = f"value_and_grad_{getattr(fn, '__name__', 'fn')}".replace("<lambda>", "lambda")
    wrapped.__wrapped__ = fn
    return wrapped


def grad(fn, argnums=0, has_aux: bool = False):
    """The gradient of a scalar function w.r.t. args[argnums] (same structure as those
    arguments); with has_aux=True, (grads, aux). See value_and_grad."""
    vg = value_and_grad(fn, argnums, has_aux)

    def wrapped(*args):
        if not _is_traced(args):
            return _eager(wrapped, args)
        value, grads = vg(*args)
        return (grads, value[1]) if has_aux else grads

    wrapped.__name__ = f"grad_{getattr(fn, '__name__', 'fn')}".replace("<lambda>", "lambda")
    wrapped.__wrapped__ = fn
    return wrapped


def stop_gradient(x) -> Tensor:
    """x, with no gradient flowing back through it."""
    return apply("stop_gradient", [api.as_tensor(x)])


def _eager(fn, args):
    """Runs a traced function on numpy arrays (pytrees of them): trace with their shapes,
    compile, call."""
    from .compiler import compile

    arrays = tree_map(np.asarray, args)
    specs: list[TensorSpec] = tree_map(lambda a: tensor(a.shape, a.dtype), arrays)
    return compile(fn, *specs)(*arrays)
