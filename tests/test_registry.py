"""Every op is declared completely, in one place, and the stages find it through the registry."""
from __future__ import annotations

import pytest

import graphc
from graphc.ops import OPS
from graphc.ops.registry import ELEMENTWISE, KINDS, REDUCE


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_declaration_is_complete(name):
    op = OPS[name]
    assert op.name == name and op.kind in KINDS
    assert callable(op.infer) and callable(op.reference)
    lo, hi = op.domain
    assert lo < hi
    if op.kind == ELEMENTWISE:
        assert callable(op.scalar) and op.arity in (1, 2, 3) and op.dtypes
    if op.kind == REDUCE:
        assert callable(op.identity) and callable(op.combine)


def test_public_functions_cover_the_issue_op_list():
    names = ("exp log sqrt rsqrt abs tanh sigmoid relu gelu maximum minimum where sum mean max "
             "reshape transpose broadcast_to expand_dims squeeze concatenate matmul softmax "
             "log_softmax one_hot astype").split()
    missing = [n for n in names if not callable(getattr(graphc, n, None))]
    assert not missing


def test_declaring_an_op_twice_is_refused():
    with pytest.raises(AssertionError, match="declared twice"):
        from graphc.ops.registry import defop
        defop("exp", ELEMENTWISE, arity=1, dtypes=("float32",), infer=None, reference=None,
              scalar=lambda e, x: x)
