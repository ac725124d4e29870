"""Control flow: scan, a loop over the leading axis of its inputs whose body is a graph.

`scan(f, init, xs)` traces `f(carry, x) -> (carry, y)` once, into a body Graph (its inputs:
the carry leaves, one slice of each xs leaf, then every tensor of the enclosing trace that f
uses: closed-over parameters become explicit inputs, see trace.BodyTrace). The outer graph
gets one `scan` node (kind LOOP; its value is only a token) with the attrs

    body        the body Graph: inputs carry..., x..., captured...; outputs carry..., y...
    num_carry   how many carry leaves, num_xs how many xs leaves
    length      the number of steps (an int or a symbolic Dim: one build serves every length)
    reverse     True: steps run from the last slice to the first (ys stay in xs's order)
    sizes       the symbols the body's shapes use, as Dims (the interpreter binds them like
                any attr), with their names in size_names

and one `scan_result` node (kind RESULT) per body output: the final carry leaves, then each
y stacked along a new leading axis of `length`.

Every stage treats the loop as one unit. The interpreter (reference.py) runs the body with
numpy once per step. simplify simplifies the body and drops from it the ys nobody reads;
fuse makes the loop one "scan" kernel and fuses the body into its own kernels; plan_buffers
plans the body's buffers inside the outer workspace (plan.LoopPlan: two buffers per carry
leaf, swapped each step); the CPU code generator emits the loop in the entry function: per
step it points the body's inputs at the current carry buffers and the t-th slices of xs,
runs the body's kernels, and writes y into the t-th slice of ys. The CUDA target makes the
loop a LoopLaunch in its launch plan (graphc_runtime/launch.py): the runtime steps it and
launches the body's kernels once a step, on the same buffers.

Reverse mode (`_scan_vjp`) adds a forward loop whose body also returns the carry each step
read (saved, stacked: memory T x carry; its body `extends` the forward one, so simplify
replaces the forward loop by it and the recurrence runs forward once), then a scan in the
other direction whose body replays the forward body at the saved carry and takes its
vector-Jacobian product (autodiff.backward): its carry is the carry's cotangent and the sums
of the captured inputs' cotangents, its ys are the cotangents of xs. Only float leaves get
cotangents. A scan inside another scan's body is refused (trace.BodyTrace).

The copies: the carry is copied in from init before the first step and out to the final
carry after the last (the steps swap two buffers). Indices inside a body (take) are clamped
by the kernels, never checked at call time.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError, TraceError
from ..ir.graph import Graph
from ..ir.types import ALL_DTYPES, FLOATS, Dim, TensorType, fmt_shape, size_eval
from ..tree import flatten, leaf_paths, path_str, unflatten
from .registry import LOOP, RESULT, defop

TOKEN = TensorType((), "bool")   # a loop node's own type: its values are its results


def _infer_scan(types, body, num_carry, num_xs, length, reverse, sizes, size_names):
    wanted = [body[i].type for i in body.inputs]
    if len(types) != len(wanted):
        raise ValueError(f"scan takes {len(wanted)} inputs for its body, got {len(types)}")
    for k, (have, want) in enumerate(zip(types, wanted)):
        if num_carry <= k < num_carry + num_xs:
            want = TensorType((length, *want.shape), want.dtype)
        if have != want:
            raise ValueError(f"scan input {k} is {have}, the body expects {want}")
    for k in range(num_carry):
        out = body[body.outputs[k]].type
        if out != wanted[k]:
            raise ValueError(f"the body returns carry {k} as {out}, it takes {wanted[k]}")
    return TOKEN


def _scan_reference(*arrays, body, num_carry, num_xs, length, reverse, sizes, size_names):
    from ..reference import run_graph

    env = dict(zip(size_names, sizes))
    carry = list(arrays[:num_carry])
    xs = arrays[num_carry:num_carry + num_xs]
    rest = list(arrays[num_carry + num_xs:])
    ys = []
    for i in body.outputs[num_carry:]:
        shape = tuple(size_eval(d, env) for d in body[i].shape)
        ys.append(np.empty((length, *shape), body[i].dtype))
    for step in range(length):
        t = length - 1 - step if reverse else step
        out = run_graph(body, carry + [x[t] for x in xs] + rest, env)
        carry = [np.asarray(c, body[body.inputs[k]].dtype) for k, c in enumerate(out[:num_carry])]
        for y, value in zip(ys, out[num_carry:]):
            y[t] = value
    return tuple(carry) + tuple(ys)


scan_op = defop("scan", LOOP, arity=None, dtypes=ALL_DTYPES, infer=_infer_scan,
                reference=_scan_reference, vjp=lambda *a, **k: _scan_vjp(*a, **k),
                doc="a loop over the leading axis of xs; attrs: see ops/control.py")

# Not differentiable on its own: autodiff.backward hands its cotangent to the loop's vjp.
scan_result = defop("scan_result", RESULT, arity=1, dtypes=("bool",),
                    infer=lambda types, index, shape, dtype: TensorType(shape, dtype),
                    reference=lambda token, index, shape, dtype: token[index],
                    doc="result `index` of a loop node (final carry leaves, then stacked ys)")


# ----------------------------------------------------------------- the public function

def scan(f, init, xs=None, length=None, reverse: bool = False):
    """jax.lax.scan: runs `carry, y = f(carry, x)` for each x along the leading axis of xs.

    Returns (final carry, ys): ys stacks every step's y along a new leading axis. `init` and
    `xs` are pytrees of tensors (xs leaves share their leading size, which may be symbolic:
    one compiled function then serves every sequence length); `xs=None` needs `length`.
    `f` is traced once and the loop runs in the compiled code. With `reverse=True` the steps
    run from the last slice to the first; ys[t] is still the y computed from xs[t].
    >>> def step(h, x):
    ...     h = graphc.tanh(x @ w + h @ u)
    ...     return h, h
    >>> h_n, hs = graphc.scan(step, h0, xs)     # xs: (T, B, I) -> hs: (T, B, H)
    """
    from ..trace import Tensor, user_location

    leaves = flatten(init)[0] + (flatten(xs)[0] if xs is not None else [])
    if not any(isinstance(leaf, Tensor) for leaf in leaves) and not _tracing():
        return _eager(f, init, xs, length, reverse)
    loc = user_location()
    name = getattr(f, "__name__", "body").replace("<lambda>", "lambda")
    init_leaves, carry_tree = _tensors(init, "init", loc)
    xs_leaves, xs_tree = _tensors(xs, "xs", loc)
    length = _length(xs_leaves, xs_tree, length, loc)
    body, captured, y_tree = _trace_body(f, name, init_leaves, carry_tree, xs_leaves, xs_tree,
                                         loc)
    nc = len(init_leaves)
    results = _loop(init_leaves + xs_leaves + captured, body, nc, len(xs_leaves), length,
                    bool(reverse))
    return unflatten(carry_tree, results[:nc]), unflatten(y_tree, results[nc:])


def _tracing() -> bool:
    from ..trace import _state
    return getattr(_state, "graph", None) is not None


def _eager(f, init, xs, length, reverse):
    """scan on numpy arrays: traced, compiled and run."""
    from ..compiler import compile
    from ..trace import tensor
    from ..tree import tree_map

    arrays = tree_map(np.asarray, (init, xs))
    specs = tree_map(lambda a: tensor(a.shape, a.dtype), arrays)
    run = compile(lambda i, x: scan(f, i, x, length, reverse), *specs)
    return run(*arrays)


def _tensors(tree, what: str, loc):
    from ..trace import Tensor, as_tensor

    try:
        leaves, treedef = flatten(tree)
    except TypeError as err:
        raise TraceError(f"scan: {what} is not a pytree: {err}", loc=loc) from None
    out = []
    for leaf, path in zip(leaves, leaf_paths(treedef)):
        if not isinstance(leaf, Tensor):
            if isinstance(leaf, (bool, int, float, np.generic, np.ndarray)):
                leaf = as_tensor(leaf)
            else:
                raise TraceError(f"scan: {path_str(path, what)} is a {type(leaf).__name__}, "
                                 f"not a tensor", loc=loc)
        out.append(leaf)
    return out, treedef


def _length(xs_leaves, xs_tree, length, loc):
    paths = leaf_paths(xs_tree)
    if length is not None and not isinstance(length, Dim):
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
            raise TraceError(f"scan: length must be a non-negative int, got {length!r}", loc=loc)
        length = int(length)
    for x, path in zip(xs_leaves, paths):
        if x.ndim == 0:
            raise ShapeError(f"scan: {path_str(path, 'xs')} is 0-d; xs leaves are scanned "
                             f"along their leading axis", op="scan", loc=loc,
                             fix="give every xs leaf a leading axis of the sequence length")
    if xs_leaves:
        first = xs_leaves[0].shape[0]
        for x, path in zip(xs_leaves[1:], paths[1:]):
            if x.shape[0] != first:
                raise ShapeError(f"scan: xs leaves have different leading sizes: "
                                 f"{path_str(paths[0], 'xs')} has {first}, "
                                 f"{path_str(path, 'xs')} has {x.shape[0]}", op="scan", loc=loc,
                                 fix="every xs leaf needs the same number of steps on axis 0")
        if length is not None and length != first:
            raise ShapeError(f"scan: length={length} but the xs leaves have leading size "
                             f"{first}", op="scan", loc=loc,
                             fix="leave length out, or make it the xs leaves' leading size")
        return first
    if length is None:
        raise TraceError("scan: with xs=None, length= must say how many steps to run", loc=loc,
                         fix="pass length=N (an int), or xs with a leading axis")
    return length


def _trace_body(f, name, init_leaves, carry_tree, xs_leaves, xs_tree, loc):
    """The body Graph, the enclosing trace's tensors it captured, and y's structure."""
    from ..trace import BodyTrace, _graph

    parent = init_leaves[0].graph if init_leaves else \
        xs_leaves[0].graph if xs_leaves else _graph()
    body = Graph(name=f"scan_{name}", single_output=False)
    with BodyTrace(body, parent) as bt:
        carry_in = [bt.add_input(f"carry{k}", t.node.type) for k, t in enumerate(init_leaves)]
        x_in = [bt.add_input(f"x{k}", TensorType(t.shape[1:], t.dtype))
                for k, t in enumerate(xs_leaves)]
        out = f(unflatten(carry_tree, carry_in), unflatten(xs_tree, x_in))
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TraceError(f"scan: {name} must return a pair (carry, y), got "
                             f"{type(out).__name__}", loc=loc,
                             fix="return (new_carry, y); y may be None")
        carry_out, y_leaves, y_tree = _body_outputs(bt, out, carry_tree, carry_in, name, loc)
    body.outputs.extend(t.id for t in carry_out + y_leaves)
    return body, bt.captured, y_tree


def _body_outputs(bt, out, carry_tree, carry_in, name, loc):
    from ..trace import Tensor, as_tensor

    def as_body(leaf, where):
        if isinstance(leaf, Tensor):
            return bt.capture(leaf) if leaf.graph is bt.parent else leaf
        if isinstance(leaf, (bool, int, float, np.generic, np.ndarray)):
            return as_tensor(leaf)
        raise TraceError(f"scan: {name} returned a {type(leaf).__name__} at {where}, not a "
                         f"tensor", loc=loc)

    try:
        new_leaves, new_tree = flatten(out[0])
        y_leaves, y_tree = flatten(out[1])
    except TypeError as err:
        raise TraceError(f"scan: {name} returned a value that is not a pytree: {err}",
                         loc=loc) from None
    if new_tree != carry_tree:
        raise TraceError(f"scan: {name} returned a carry structured as {new_tree}, but init is "
                         f"{carry_tree}", loc=loc,
                         fix="return the carry with the same structure as init")
    carry_out = []
    for leaf, path, before in zip(new_leaves, leaf_paths(carry_tree), carry_in):
        where = path_str(path, "carry")
        leaf = as_body(leaf, where)
        if leaf.node.type != before.node.type:
            raise ShapeError(f"scan: {name} returns {where} as {leaf.node.type} "
                             f"({leaf.dtype}{fmt_shape(leaf.shape)}), but init has "
                             f"{before.node.type}", op="scan", loc=loc,
                             fix="the carry keeps its shape and dtype from step to step "
                                 "(cast with .astype, or fix init's shape)")
        carry_out.append(leaf)
    ys = [as_body(leaf, path_str(path, "y")) for leaf, path in zip(y_leaves, leaf_paths(y_tree))]
    return carry_out, ys, y_tree


def _loop(inputs, body, num_carry, num_xs, length, reverse):
    """The scan node and its result tensors in the current trace."""
    from ..trace import apply

    syms = _symbols(body)
    token = apply("scan", list(inputs), body=body, num_carry=num_carry, num_xs=num_xs,
                  length=length, reverse=reverse, sizes=tuple(Dim((s,)) for s in syms),
                  size_names=syms)
    results = []
    for k, i in enumerate(body.outputs):
        t = body[i].type
        shape = t.shape if k < num_carry else (length, *t.shape)
        results.append(apply("scan_result", [token], index=k, shape=tuple(shape), dtype=t.dtype))
    return results


def _symbols(body: Graph) -> tuple[str, ...]:
    """The symbolic sizes in the body's shapes and attributes (a reshape's target shape)."""
    found: set[str] = set()
    stack = [d for node in body.nodes for d in node.shape]
    stack += [v for node in body.nodes for v in node.attrs.values()]
    while stack:
        value = stack.pop()
        if isinstance(value, Dim):
            found.update(value.syms)
        elif isinstance(value, tuple):
            stack.extend(value)
    return tuple(sorted(found))


# ----------------------------------------------------------------- reverse mode

def replay(graph: Graph, inputs: list) -> list:
    """Records `graph`'s nodes again in the current trace on `inputs` (tensors); its outputs."""
    from ..ops.registry import OPS
    from ..trace import Tensor

    target = inputs[0].graph if inputs else None
    values: dict[int, object] = {}
    for node in graph.nodes:
        if OPS[node.op].source == "input":
            values[node.id] = inputs[node.attrs["index"]]
            continue
        if target is None:
            from ..trace import _graph
            target = _graph()
        new = target.add(node.op, [values[i].id for i in node.inputs], node.attrs, node.type,
                         node.loc)
        values[node.id] = Tensor(target, new.id)
    return [values[i] for i in graph.outputs]


def _scan_vjp(parts, token, *inputs, body, num_carry, num_xs, length, reverse, sizes,
              size_names):
    from .. import api
    from ..autodiff import backward, zeros_like
    from ..trace import _state

    nc, nx = num_carry, num_xs
    ny = len(body.outputs) - nc
    inits, xs, ws = list(inputs[:nc]), list(inputs[nc:nc + nx]), list(inputs[nc + nx:])
    # the forward loop again, also returning the carry each step reads (simplify merges the
    # two loops into this one: Graph.extends)
    saving = Graph(list(body.nodes), list(body.inputs), list(body.outputs) + body.inputs[:nc],
                   name=f"{body.name}_saving", single_output=False, extends=body)
    saved = _loop(inputs, saving, nc, nx, length, reverse)[nc + ny:]

    fc = [k for k in range(nc) if inits[k].dtype in FLOATS]
    fx = [k for k in range(nx) if xs[k].dtype in FLOATS]
    fw = [k for k in range(len(ws)) if ws[k].dtype in FLOATS]
    fy = [k for k in range(ny) if nc + k in parts]
    ct = [parts[k] if k in parts else zeros_like(inits[k]) for k in fc]
    acc = [zeros_like(ws[k]) for k in fw]

    def step(carry, x):
        ct_c, acc_w = carry
        x_t, c_t, gy = x
        w_in = [_state.body.capture(w) for w in ws]
        start = len(_state.body.graph.nodes)
        outs = replay(body, list(c_t) + list(x_t) + w_in)
        seeds = [(outs[k], g) for k, g in zip(fc, ct_c)] + \
                [(outs[nc + k], g) for k, g in zip(fy, gy)]
        wrt = [c_t[k] for k in fc] + [x_t[k] for k in fx] + [w_in[k] for k in fw]
        grads = backward(seeds, wrt, start)
        d_c = grads[:len(fc)]
        d_x = grads[len(fc):len(fc) + len(fx)]
        d_w = grads[len(fc) + len(fx):]
        return (d_c, [api.add(a, d) for a, d in zip(acc_w, d_w)]), d_x

    (d_init, d_ws), d_xs = scan(step, (ct, acc), (xs, saved, [parts[nc + k] for k in fy]),
                                length=length, reverse=not reverse)
    grads: list = [None] * len(inputs)
    for k, g in zip(fc, d_init):
        grads[k] = g
    for k, g in zip(fx, d_xs):
        grads[nc + k] = g
    for k, g in zip(fw, d_ws):
        grads[nc + nx + k] = g
    return grads


__all__ = ["TOKEN", "replay", "scan"]
