"""explain: what fusion decided, for people.

Assumes kernels from `fuse` (in execution order, with `maps` and `declined` filled in).
Guarantees: every kernel is listed with its nodes, their ops and the user's source lines, and
every producer -> consumer edge between two kernels is listed under the consumer's kernel with
the rule that kept the two apart (a cycle, a reduction boundary, a size mismatch, a cost
rule, ...). Nothing here changes a decision.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir.graph import Graph
from ..ir.types import fmt_shape
from .fusion import Declined, Kernel


@dataclass
class Explanation:
    """The kernels of a compiled graph and why edges between them were not fused; print it."""

    graph: Graph
    kernels: list[Kernel]

    @property
    def declined(self) -> list[Declined]:
        return [d for k in self.kernels for d in k.declined]

    def reasons(self, producer: int, consumer: int) -> list[str]:
        """Why the edge %producer -> %consumer was not fused (empty: it was, or no such edge)."""
        return [d.reason for d in self.declined
                if d.producer == producer and d.consumer == consumer]

    def __str__(self) -> str:
        graph = self.graph
        kernel_of = {n: k for k in self.kernels for n in k.nodes}
        lines = [f"{graph.name}: {len(self.kernels)} kernel(s), "
                 f"{len(self.declined)} edge(s) between kernels"]
        for k in self.kernels:
            extra = f", reducing axes {k.reduce_axes}" if k.kind == "rows" else ""
            lines.append(f"{k.name}: {k.kind} over {fmt_shape(k.space)}{extra}")
            for n in k.nodes:
                node = graph[n]
                lines.append(f"  %{n:<5} {node.op:<14} {_where(node)}".rstrip())
            for d in k.declined:
                source = kernel_of[d.producer].name
                lines.append(f"  not fused: %{d.producer} {graph[d.producer].op} ({source}) -> "
                             f"%{d.consumer} {graph[d.consumer].op}: {d.reason}")
            if k.body is not None:  # a loop: its body's kernels, run once per step
                inner = str(Explanation(*k.body)).splitlines()
                lines.append(f"  body, each step: {inner[0]}")
                lines += ["    " + line for line in inner[1:]]
        return "\n".join(lines)

    __repr__ = __str__


def _where(node) -> str:
    return node.loc.splitlines()[0] if node.loc else ""


def explain(graph: Graph, kernels: list[Kernel]) -> Explanation:
    """Each kernel with its ops and source lines, and why each unfused edge was not fused.

    >>> c = graphc.compile(lambda x: graphc.exp(x) @ x, graphc.tensor((4, 4)))
    >>> print(explain(c.graph, c.kernels))   # the same as print(c.explain())
    ... not fused: %1 exp (k0_exp) -> %2 matmul: kernel kind: a matmul reads its operands ...
    """
    return Explanation(graph, kernels)
