"""einsum as a composite: every contraction becomes transposes, reshapes, one (batched) matmul
or a broadcast multiply per pair of operands, and sums. It adds no primitive."""
from __future__ import annotations

import string

from .. import api as G
from ..errors import DTypeError, ShapeError, TraceError
from ..ir.types import Dim, fmt_shape, numel
from ..trace import Tensor, apply, as_tensor, promote, user_location

_LETTERS = set(string.ascii_letters)


def _fail(message: str, fix: str | None = None, error=ShapeError):
    raise error(f"einsum: {message}", op="einsum", loc=user_location(), fix=fix)


def _parse_term(term: str, ndim: int, where: str) -> list[str]:
    """One operand's subscripts as labels; '...' becomes labels '.k' (k counted from the right)."""
    if term.count("...") > 1 or term.replace("...", "").count("."):
        _fail(f"{where} {term!r}: '.' may only appear as one '...'", error=TraceError)
    head, dots, tail = term.partition("...")
    for c in head + tail:
        if c not in _LETTERS:
            _fail(f"{where} {term!r}: {c!r} is not a subscript letter", error=TraceError,
                  fix="use the letters a-z and A-Z, ',' between operands, '->' before the output")
    explicit = len(head) + len(tail)
    if (not dots and explicit != ndim) or (dots and explicit > ndim):
        _fail(f"{where} {term!r} names {explicit} axes, but the operand has {ndim}",
              fix="give one letter per axis, or '...' for the leading ones")
    covered = ndim - explicit if dots else 0
    return list(head) + [f".{k}" for k in reversed(range(covered))] + list(tail)


def _parse(subscripts: str, operands: list[Tensor]) -> tuple[list[list[str]], list[str]]:
    text = subscripts.replace(" ", "")
    if text.count("->") > 1:
        _fail(f"{subscripts!r} has more than one '->'", error=TraceError)
    lhs, arrow, rhs = text.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(operands):
        _fail(f"{subscripts!r} has {len(terms)} operand terms, but {len(operands)} operands "
              f"were given", error=TraceError, fix="give one comma-separated term per operand")
    inputs = [_parse_term(t, x.ndim, f"operand {i}") for i, (t, x) in
              enumerate(zip(terms, operands))]
    ellipsis = max((len([a for a in labels if a.startswith(".")]) for labels in inputs),
                   default=0)
    dots = [f".{k}" for k in reversed(range(ellipsis))]
    if not arrow:
        letters = [a for labels in inputs for a in labels if not a.startswith(".")]
        once = sorted(a for a in set(letters) if letters.count(a) == 1)
        return inputs, dots + once
    if rhs.count("...") > 1 or rhs.replace("...", "").count("."):
        _fail(f"output {rhs!r}: '.' may only appear as one '...'", error=TraceError)
    head, has_dots, tail = rhs.partition("...")
    if not has_dots and ellipsis:
        _fail(f"{subscripts!r}: the operands' '...' covers {ellipsis} axes, but the output "
              f"has no '...'", fix="add '...' to the output, as numpy requires")
    output = list(head) + (dots if has_dots else []) + list(tail)
    seen = {a for labels in inputs for a in labels}
    for a in head + tail:
        if a not in _LETTERS:
            _fail(f"output {rhs!r}: {a!r} is not a subscript letter", error=TraceError)
        if a not in seen:
            _fail(f"output subscript {a!r} appears in no operand", error=TraceError)
        if output.count(a) > 1:
            _fail(f"output subscript {a!r} appears more than once", error=TraceError)
    return inputs, output


def _sizes(inputs, operands) -> dict[str, object]:
    """Each label's size; 1 broadcasts against any size, as in numpy."""
    sizes: dict[str, object] = {}
    for i, (labels, x) in enumerate(zip(inputs, operands)):
        for a, d in zip(labels, x.shape):
            old = sizes.get(a, 1)
            if d == 1 or d == old:
                sizes.setdefault(a, d)
            elif old == 1:
                sizes[a] = d
            else:
                name = "'...'" if a.startswith(".") else repr(a)
                _fail(f"subscript {name} has size {old} in one operand and {d} in operand {i} "
                      f"(shapes {', '.join(fmt_shape(o.shape) for o in operands)})",
                      fix="the axes that share a letter must have the same size (or size 1)")
    return sizes


def _diagonal(x: Tensor, labels: list[str]) -> tuple[Tensor, list[str]]:
    """Takes the diagonal for each letter repeated in one operand ('ii->i')."""
    while True:
        repeated = next((a for a in labels if labels.count(a) > 1), None)
        if repeated is None:
            return x, labels
        p = labels.index(repeated)
        q = labels.index(repeated, p + 1)
        n = x.shape[p]
        if x.shape[q] != n or isinstance(n, Dim):
            _fail(f"the diagonal of {repeated!r} needs two axes of the same static size, got "
                  f"{x.shape[p]} and {x.shape[q]}")
        index = apply("iota", [], dtype="int64", shape=(n,))
        rows = G.reshape(index, tuple(n if i == p else 1 for i in range(x.ndim)))
        cols = G.reshape(index, tuple(n if i == q else 1 for i in range(x.ndim)))
        x = G.sum(G.where(G.equal(rows, cols), x, G.constant(0, x.dtype)), q)
        labels = labels[:q] + labels[q + 1:]


def _sum_out(x: Tensor, labels: list[str], keep) -> tuple[Tensor, list[str]]:
    axes = tuple(i for i, a in enumerate(labels) if a not in keep)
    if not axes:
        return x, labels
    return G.sum(x, axes), [a for a in labels if a in keep]


def _arrange(x: Tensor, labels: list[str], order: list[str]) -> Tensor:
    """x with its axes in `order`; a label x lacks becomes an axis of size 1."""
    mine = [a for a in order if a in labels]
    x = G.transpose(x, tuple(labels.index(a) for a in mine))
    sizes = dict(zip(mine, x.shape))
    return G.reshape(x, tuple(sizes.get(a, 1) for a in order))


def _widen(x: Tensor, labels: list[str], sizes: dict, axes_labels) -> Tensor:
    """Broadcasts x's size-1 axes of `axes_labels` to the labels' full sizes."""
    shape = tuple(sizes[a] if a in axes_labels else d for a, d in zip(labels, x.shape))
    return G.broadcast_to(x, shape)


def _contract(a, la, b, lb, keep, sizes):
    """One pair: batch labels (in both, kept), contracted (in both, not kept), and the rest."""
    a, la = _sum_out(a, la, set(lb) | keep)
    b, lb = _sum_out(b, lb, set(la) | keep)
    batch = [c for c in la if c in lb and c in keep]
    contracted = [c for c in la if c in lb and c not in keep]
    a_only = [c for c in la if c not in lb]
    b_only = [c for c in lb if c not in la]
    if not contracted:
        order = batch + a_only + b_only
        return G.multiply(_arrange(a, la, order), _arrange(b, lb, order)), order
    # (batch..., rows, k) @ (batch..., k, cols); the batch axes broadcast in matmul
    a = _arrange(_widen(a, la, sizes, contracted), la, batch + a_only + contracted)
    b = _arrange(_widen(b, lb, sizes, contracted), lb, batch + contracted + b_only)
    nb = len(batch)
    rows = tuple(a.shape[nb:nb + len(a_only)])
    cols = tuple(b.shape[nb + len(contracted):])
    k = numel([sizes[c] for c in contracted])
    y = G.matmul(G.reshape(a, tuple(a.shape[:nb]) + (numel(rows), k)),
                 G.reshape(b, tuple(b.shape[:nb]) + (k, numel(cols))))
    return G.reshape(y, tuple(y.shape[:nb]) + rows + cols), batch + a_only + b_only


def einsum(subscripts: str, *operands) -> Tensor:
    """numpy.einsum for sums of products: explicit ('ij,jk->ik') or implicit output ('ij,jk'),
    transposes ('ij->ji'), diagonals ('ii->i'), sums ('ij->i'), outer products ('i,j->ij'),
    '...' for broadcast leading axes, and any number of operands (contracted left to right).
    Each pair becomes one batched matmul (or a broadcast multiply when nothing is contracted).

        >>> s = graphc.einsum("bhqd,bhkd->bhqk", q, k)    # (B,H,L,D), (B,H,S,D) -> (B,H,L,S)
        >>> y = graphc.einsum("...ij,jk->...ik", x, w)
    """
    if not isinstance(subscripts, str):
        _fail(f"subscripts must be a string like 'ij,jk->ik', got {type(subscripts).__name__}",
              error=TraceError, fix="numpy's sublist form einsum(a, [0, 1], ...) is not supported")
    if not operands:
        _fail("needs at least one operand", error=TraceError)
    operands = list(promote(*operands)) if len(operands) > 1 else [as_tensor(operands[0])]
    if operands[0].dtype == "bool":
        _fail("bool operands are not supported", error=DTypeError,
              fix="convert them with .astype('int64') or a float dtype first")
    inputs, output = _parse(subscripts, operands)
    sizes = _sizes(inputs, operands)
    pairs = [_diagonal(x, labels) for x, labels in zip(operands, inputs)]
    x, labels = pairs[0]
    for i, (y, y_labels) in enumerate(pairs[1:], start=1):
        keep = set(output).union(*(set(lb) for _, lb in pairs[i + 1:]))
        x, labels = _contract(x, labels, y, y_labels, keep, sizes)
    x, labels = _sum_out(x, labels, set(output))
    x = G.transpose(x, tuple(labels.index(a) for a in output))
    shape = tuple(sizes[a] for a in output)
    return x if tuple(x.shape) == shape else G.broadcast_to(x, shape)
