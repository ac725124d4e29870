"""Graph IR: immutable SSA nodes in topological order, and its printer."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphc_runtime.tree import TreeDef

from .types import TensorType


@dataclass(frozen=True, eq=False)
class Node:
    id: int
    op: str
    inputs: tuple[int, ...]
    attrs: dict[str, Any]
    type: TensorType
    loc: str | None = None

    @property
    def shape(self):
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype


def fmt_attr(value) -> str:
    if isinstance(value, np.ndarray):
        if value.size == 1:
            return repr(value.reshape(-1)[0].item())
        return f"<array {value.dtype}{list(value.shape)}>"
    if isinstance(value, Graph):  # a loop's body: named by its computation
        return f"<body {value.name}: {len(value.nodes)} nodes, {value.digest()[:12]}>"
    if isinstance(value, tuple):
        return "(" + ", ".join(fmt_attr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value) if isinstance(value, str) else str(value)


@dataclass(eq=False)
class Graph:
    """Nodes in topological order (ids are positions); `inputs`/`outputs` are node ids."""

    nodes: list[Node] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    name: str = "graph"
    # True when the traced function returned a single tensor, not a tuple.
    single_output: bool = True
    # output position -> input position: that output is written into the input's array
    # (in-place state: parameters and optimizer state of a training step).
    aliases: dict[int, int] = field(default_factory=dict)
    # Pytree structures of the arguments (a tuple, one child per argument) and of the result,
    # and the arguments' names; None: flat (see graphc_runtime.signature.Signature).
    in_tree: TreeDef | None = None
    out_tree: TreeDef | None = None
    arg_names: tuple = ()
    # A loop body only: the body this one repeats with more outputs (scan's vjp saves the
    # carries this way); simplify then runs one loop for both. Not part of the computation.
    extends: "Graph | None" = field(default=None, repr=False)

    def structure(self) -> dict:
        """The fields a rebuilt graph (a pass's output) copies unchanged."""
        return {"name": self.name, "single_output": self.single_output,
                "aliases": dict(self.aliases), "in_tree": self.in_tree,
                "out_tree": self.out_tree, "arg_names": self.arg_names}

    def __getitem__(self, node_id: int) -> Node:
        return self.nodes[node_id]

    def add(self, op: str, inputs, attrs, type_: TensorType, loc: str | None = None) -> Node:
        node = Node(len(self.nodes), op, tuple(inputs), dict(attrs), type_, loc)
        self.nodes.append(node)
        return node

    def users(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {n.id: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                out[i].append(n.id)
        return out

    def line(self, node: Node, with_loc: bool = True) -> str:
        args = ", ".join(f"%{i}" for i in node.inputs)
        attrs = ", ".join(f"{k}={fmt_attr(v)}" for k, v in sorted(node.attrs.items()))
        text = f"%{node.id} = {node.op}"
        if args:
            text += " " + args
        if attrs:
            text += (" " if not args else ", ") + attrs
        text = f"  {text:<44} : {node.type}"
        if with_loc and node.loc:
            text += f"   # {node.loc.splitlines()[0]}"
        return text

    def __str__(self) -> str:
        sig = ", ".join(f"{self.nodes[i].attrs['name']}: {self.nodes[i].type}" for i in self.inputs)
        lines = [f"graph {self.name}({sig}) {{"]
        lines += [self.line(n) for n in self.nodes]
        lines.append("  return " + ", ".join(f"%{i}" for i in self.outputs))
        if self.in_tree is not None and not self.in_tree.is_flat_tuple:
            lines.append(f"  # arguments ({', '.join(self.arg_names)}): {self.in_tree}")
        if self.out_tree is not None and not (self.out_tree.is_leaf or
                                              self.out_tree.is_flat_tuple):
            lines.append(f"  # result: {self.out_tree}")
        for o, i in sorted(self.aliases.items()):
            lines.append(f"  # output {o} is written in place into input {i}")
        lines.append("}")
        for node in self.nodes:  # loop bodies, after the graph that runs them
            for value in node.attrs.values():
                if isinstance(value, Graph):
                    lines.append(f"# body of %{node.id} {node.op} in {self.name}:")
                    lines.append(str(value))
        return "\n".join(lines)

    __repr__ = __str__

    def digest(self) -> str:
        """A hash of canonical() and the arrays in attributes (constants' values)."""
        h = hashlib.sha256(self.canonical().encode())
        for node in self.nodes:
            for value in node.attrs.values():
                if isinstance(value, np.ndarray):
                    h.update(np.ascontiguousarray(value).tobytes())
        return h.hexdigest()

    def canonical(self) -> str:
        """Text that identifies the computation (no source locations): the cache key's base."""
        lines = [self.line(n, with_loc=False) for n in self.nodes]
        lines.append("return " + ",".join(map(str, self.outputs)) + f" single={self.single_output}"
                     f" aliases={sorted(self.aliases.items())} in={self.in_tree}"
                     f" out={self.out_tree} names={self.arg_names}")
        return "\n".join(lines)
