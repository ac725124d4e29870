"""The op table: every primitive declared once with all the rules every stage needs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

# Op kinds. Fusion matches on these; stages ask OpDef fields, not op names (see below).
SOURCE = "source"            # no inputs: graph input, constant, iota, runtime size
ELEMENTWISE = "elementwise"  # out[i] = f(inputs broadcast to out's shape)
LAYOUT = "layout"            # out[i] = in[affine index]: transpose, broadcast_to (read from memory)
VIEW = "view"                # same bytes, new shape: reshape, expand_dims, squeeze (no kernel)
REDUCE = "reduce"            # combine over axes
MATMUL = "matmul"
CONCAT = "concat"
GATHER = "gather"            # out[i] = a sum of guarded reads of the inputs at computed indices
                             # (slices, padding, windows of a convolution, take); starts a map
                             # kernel that its consumers join
SCATTER = "scatter"          # out[..., idx[j], ...] += upd[..., j, ...] (attrs: axis, size,
                             # along); its own kernel, duplicates accumulating in order
ATTENTION = "attention"      # softmax(q k^T * scale + mask) v, one query row at a time over
                             # blocks of keys (online softmax): the scores never reach memory
CONV = "conv"                # a direct 2-d convolution (stride 1): each output row block
                             # accumulates its kernel's taps in registers; no im2col
LOOP = "loop"                # runs attrs["body"] (a Graph) once per step: scan (ops/control.py)
RESULT = "result"            # output attrs["index"] of a multi-output node (a loop's results)
KINDS = (SOURCE, ELEMENTWISE, LAYOUT, VIEW, REDUCE, MATMUL, CONCAT, GATHER, SCATTER,
         ATTENTION, CONV, LOOP, RESULT)

# What a source op's value is (OpDef.source); stages switch on this, never on the op's name.
SOURCES = ("input",      # bound by the caller (attrs: name, index)
           "constant",   # attrs["value"]: an array, in the plan's constants unless 1 element
           "iota",       # the coordinate along its only axis, computed inline
           "size")       # a runtime (possibly symbolic) size, computed inline

# The places that still compare an op's name, and why (tests/test_registry.py fails on any
# other `node.op == "..."` in graphc/):
#   simplify   creates "copy" nodes and recognizes its own copies (an output already copied)
#   exporter   exports a max over a window's kernel axes (a max pool) as ONNX's MaxPool
NAME_CHECKS = {"passes/simplify.py": ("copy",), "onnx/exporter.py": ("window",)}


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
    source: str = ""                  # SOURCE ops: one of SOURCES; "" for every other kind
    # LAYOUT ops that permute axes: attrs -> axes (output axis i reads input axis axes[i])
    permutation: Callable[..., tuple] | None = None
    costly: bool = False              # the scalar rule is a transcendental call: codegen keeps
                                      # its value (e.g. in an output) rather than recompute it
    divides: bool = False             # a / b: codegen may multiply by 1/b computed once per row
    compensated: bool = False         # reduce: its float rounding errors add up (a sum), so
                                      # codegen accumulates in blocks and adds the block
                                      # totals with Neumaier compensation
    # GATHER ops: (ix, out coords, **attrs) -> Val, the output element at `coords` (i64
    # values), built from ix's index arithmetic and guarded reads (codegen/builder.Indexer)
    gather: Callable[..., Any] | None = None
    # GATHER ops: (input shape, **attrs) -> whether output row r (axis 0) reads input row r
    # and no other (a scan body may then run in bands of rows: codegen/cpu.row_separable)
    keeps_rows: Callable[..., bool] | None = None
    # ops that index an axis with one of their inputs: (input types, **attrs) -> (position of
    # the indices input, size of the axis they index); the runtime checks indices that are
    # graph inputs against it before native code runs (graphc.signature.index_bounds)
    bounds: Callable[..., Any] | None = None
    # ELEMENTWISE ops whose scalar rule also builds vector values (its constants come from
    # Emitter.const, its casts from Emitter.cast): codegen may run it on whole vectors
    vector_rule: bool = False
    # GATHER ops whose output (N, C, *kernel, *out) holds the input's sliding-window entries
    # (attrs kernel, stride, dilation, pad_lo, pad_hi, lhs_dilation, fill, channels_last)
    sliding_window: bool = False
    doc: str = ""

    def __post_init__(self):
        assert self.kind in KINDS, f"{self.name}: unknown kind {self.kind}"
        if self.kind == ELEMENTWISE:
            assert self.scalar is not None, f"{self.name}: elementwise op needs a scalar rule"
        if self.kind == REDUCE:
            assert self.identity and self.combine, f"{self.name}: reduce op needs identity+combine"
        if self.kind == SOURCE:
            assert self.source in SOURCES, f"{self.name}: source op needs source= one of {SOURCES}"
        else:
            assert not self.source, f"{self.name}: only source ops declare source="
        if self.permutation is not None:
            assert self.kind == LAYOUT, f"{self.name}: only layout ops permute axes"
        if self.costly or self.divides:
            assert self.kind == ELEMENTWISE, f"{self.name}: costly/divides are elementwise fields"
        if self.compensated:
            assert self.kind == REDUCE, f"{self.name}: only reduce ops are compensated"
        assert (self.gather is not None) == (self.kind == GATHER), \
            f"{self.name}: gather ops (and only they) declare a gather rule"


OPS: dict[str, OpDef] = {}


def defop(name: str, kind: str, **fields) -> OpDef:
    """Registers one primitive. Every stage finds it through OPS[name]."""
    assert name not in OPS, f"op {name} declared twice"
    op = OpDef(name=name, kind=kind, **fields)
    OPS[name] = op
    return op
