"""The op table: every primitive declared once with all the rules every stage needs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

# Op kinds. Fusion matches on these; nothing else in the compiler looks at op names.
SOURCE = "source"            # no inputs: graph input, constant, iota, runtime size
ELEMENTWISE = "elementwise"  # out[i] = f(inputs broadcast to out's shape)
LAYOUT = "layout"            # out[i] = in[affine index]: transpose, broadcast_to (read from memory)
VIEW = "view"                # same bytes, new shape: reshape, expand_dims, squeeze (no kernel)
REDUCE = "reduce"            # combine over axes
MATMUL = "matmul"
CONCAT = "concat"
SLICE = "slice"              # a box of the input (static starts); its own copy kernel
KINDS = (SOURCE, ELEMENTWISE, LAYOUT, VIEW, REDUCE, MATMUL, CONCAT, SLICE)


@dataclass(frozen=True)
class OpDef:
    name: str
    kind: str
    arity: int | None                 # None: variadic
    dtypes: tuple[str, ...]           # accepted input dtypes
    infer: Callable[..., Any]         # (input types, **attrs) -> TensorType; raises ValueError
    reference: Callable[..., Any]     # numpy semantics: (*arrays, **attrs) -> array
    scalar: Callable[..., Any] | None = None    # elementwise: (emitter, *values, **attrs) -> value
    identity: Callable[[str], float] | None = None   # reduce: the accumulator's start value
    combine: Callable[..., Any] | None = None   # reduce: (emitter, acc, x) -> acc
    vjp: Callable[..., Any] | None = None       # reverse-mode rule; None: not differentiable
    domain: tuple[float, float] = (-3.0, 3.0)   # where tests draw inputs
    fix: str = ""                               # advice printed with this op's shape errors
    per_element: bool = False                   # the scalar rule uses the element's flat index
    doc: str = ""

    def __post_init__(self):
        assert self.kind in KINDS, f"{self.name}: unknown kind {self.kind}"
        if self.kind == ELEMENTWISE:
            assert self.scalar is not None, f"{self.name}: elementwise op needs a scalar rule"
        if self.kind == REDUCE:
            assert self.identity and self.combine, f"{self.name}: reduce op needs identity+combine"


OPS: dict[str, OpDef] = {}


def defop(name: str, kind: str, **fields) -> OpDef:
    """Registers one primitive. Every stage finds it through OPS[name]."""
    assert name not in OPS, f"op {name} declared twice"
    op = OpDef(name=name, kind=kind, **fields)
    OPS[name] = op
    return op
