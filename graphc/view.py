"""view_data: what the HTML view (graphc_runtime/view.py) shows of a compiled graph, as JSON data.

The compiler writes it (Compiled.to_html, and every exported artifact keeps a copy for
`graphc view`); the runtime lays it out and renders it, so artifacts need no compiler to be
viewed. Drawn: graph inputs, stored constants, every node a kernel computes and the views read
in place. Sources computed inside kernels (scalar constants, iota, sizes) are not drawn; their
values show on the nodes that read them. A scan's body graph is a graph of its own, drawn
after the graph that runs it.
"""
from __future__ import annotations

from .ir.graph import fmt_attr
from .ops.registry import OPS, VIEW
from .passes.simplify import is_inline_source
from .signature import size_json

VIEW_FORMAT = 1
_MAX_ATTR = 80   # characters of attributes shown per node


def view_data(compiled) -> dict:
    """The graph(s), kernels, buffer plan and fusion reasons of `compiled`, as JSON data."""
    plan = compiled.plan
    graphs = []
    # (graph, kernels, plan, title, parent kernel name): the top graph, then each scan's body
    # (a work list, not recursion: bodies of bodies follow their parents)
    todo = [(compiled.graph, compiled.kernels, plan, compiled.graph.name, "")]
    while todo:
        graph, kernels, gplan, title, parent = todo.pop(0)
        graphs.append(_graph_data(graph, kernels, title, parent))
        for t, kernel in enumerate(kernels):
            if kernel.body is not None:
                body, body_kernels = kernel.body
                inner = gplan.loops[t].plan if t in gplan.loops else None
                todo.append((body, body_kernels, inner, f"{kernel.name}: body, each step",
                             kernel.name))
    return {
        "graphc_view": VIEW_FORMAT,
        "name": compiled.graph.name,
        "target": compiled.backend.describe(compiled.options),
        "signature": compiled.signature.describe(),
        "graphs": graphs,
        "plan": _plan_data(compiled),
    }


def _graph_data(graph, kernels, title: str, parent: str) -> dict:
    kernel_of = {n: k for k, kernel in enumerate(kernels) for n in kernel.nodes}
    inline = {node.id for node in graph.nodes if is_inline_source(node)}
    outputs = {o: k for k, o in enumerate(graph.outputs)}
    nodes = []
    for node in graph.nodes:
        if node.id in inline:
            continue
        opdef = OPS[node.op]
        if node.id in graph.inputs:
            role = "input"
        elif opdef.source == "constant":
            role = "const"
        elif node.id in kernel_of:
            role = "op"
        elif opdef.kind == VIEW:
            role = "view"
        else:
            role = "op"
        attrs = ", ".join(f"{k}={fmt_attr(v)}" for k, v in node.attrs.items()
                          if k not in ("value", "body", "index"))
        nodes.append({
            "id": node.id, "op": node.op, "role": role,
            "inputs": [i for i in node.inputs if i not in inline],
            "inline": [f"%{i} = {_inline_text(graph[i])}" for i in node.inputs if i in inline],
            "shape": [str(d) for d in node.shape], "dtype": node.dtype,
            "loc": node.loc or "", "kernel": kernel_of.get(node.id, -1),
            "output": outputs.get(node.id, -1),
            "attrs": attrs[:_MAX_ATTR] + ("..." if len(attrs) > _MAX_ATTR else ""),
        })
    return {"title": title, "parent": parent, "nodes": nodes,
            "kernels": [_kernel_data(graph, k) for k in kernels]}


def _inline_text(node) -> str:
    if OPS[node.op].source == "constant":
        return fmt_attr(node.attrs["value"])
    return node.op


def _kernel_data(graph, kernel) -> dict:
    lines: list[str] = []
    for n in kernel.nodes:
        loc = graph[n].loc
        if loc and loc.splitlines()[0] not in lines:
            lines.append(loc.splitlines()[0])
    return {
        "name": kernel.name, "kind": kernel.kind,
        "space": [str(d) for d in kernel.space], "ops": list(kernel.ops),
        "nodes": list(kernel.nodes), "lines": lines,
        "reads": list(kernel.reads), "writes": list(kernel.outputs),
        "declined": [{"producer": d.producer, "consumer": d.consumer, "reason": d.reason}
                     for d in kernel.declined],
    }


def _plan_data(compiled) -> dict:
    """Workspace slots (their candidate byte sizes, as sizes to take the maximum of, and the
    values that live there), constants' bytes, the graph's inputs and outputs."""
    plan, graph = compiled.plan, compiled.graph
    held: dict[int, list[int]] = {}
    for root, loc in plan.location.items():
        if loc.space == "slot":
            held.setdefault(loc.index, []).append(root)
    for t, loop in plan.loops.items():   # slots a scan's body uses while it runs
        for s in loop.scratch():
            held.setdefault(s, [])
    sig = compiled.signature
    return {
        "slots": [{"sizes": [size_json(s) for s in sizes], "values": sorted(held.get(k, []))}
                  for k, sizes in enumerate(plan.slots)],
        "constants": [int(c.nbytes) for c in plan.constants],
        "inputs": [{"name": n, "dtype": d, "shape": [_dim(x) for x in s]}
                   for n, d, s in sig.inputs],
        "outputs": [{"dtype": d, "shape": [_dim(x) for x in s]} for d, s in sig.outputs],
        "in_place": {str(k): v for k, v in graph.aliases.items()},
    }


def _dim(d):
    """A signature dim (an int, a symbol name or (coef, symbols)) as JSON data."""
    return d if isinstance(d, (int, str)) else [d[0], list(d[1])]


def to_html(compiled, path: str, profile=None) -> str:
    from graphc_runtime.view import write_html
    return write_html(path, view_data(compiled), profile)


__all__ = ["view_data", "to_html", "VIEW_FORMAT"]
