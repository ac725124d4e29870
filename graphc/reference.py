"""evaluate(): the numpy interpreter. Runs a graph op by op through each op's reference rule."""
from __future__ import annotations

import numpy as np

from .ir.graph import Graph
from .ir.types import Dim
from .ops.registry import LOOP, OPS
from .signature import bind_inputs, signature_of


def _resolve(value, env):
    if isinstance(value, Dim):
        return value.evaluate(env)
    if isinstance(value, tuple):
        return tuple(_resolve(v, env) for v in value)
    return value


def evaluate(graph: Graph, *arrays):
    """Runs `graph` on numpy arrays with numpy, one op at a time (the correctness oracle).

    Arguments and the result are pytrees structured as the traced function's.
    >>> g = graphc.trace(lambda x: x * 2, graphc.tensor((3,)))
    >>> graphc.evaluate(g, np.ones(3, np.float32))
    """
    sig = signature_of(graph)
    arrays, env = bind_inputs(sig, sig.flatten_args(arrays))
    results = tuple(np.array(v, copy=True) for v in run_graph(graph, arrays, env))
    return sig.structure(results[0] if graph.single_output else results)


def run_graph(graph: Graph, arrays, env: dict[str, int]) -> list:
    """The graph's outputs (flat) on flat input arrays, with symbolic sizes bound by `env`.
    A loop node's value is the tuple of its results (a loop's reference runs its body here)."""
    values: dict[int, object] = {}
    for node in graph.nodes:
        op = OPS[node.op]
        if op.source == "input":
            values[node.id] = arrays[node.attrs["index"]]
            continue
        attrs = {k: _resolve(v, env) for k, v in node.attrs.items()}
        out = op.reference(*[values[i] for i in node.inputs], **attrs)
        if op.kind == LOOP:
            values[node.id] = out
            continue
        out = np.asarray(out)
        if out.dtype != np.dtype(node.dtype):
            out = out.astype(node.dtype)
        values[node.id] = out
    return [values[i] for i in graph.outputs]
