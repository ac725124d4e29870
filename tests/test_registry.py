"""Every op is declared completely, in one place, and the stages find it through the registry."""
from __future__ import annotations

import pathlib
import re

import pytest

import graphc
from graphc.ops import OPS
from graphc.ops.registry import (ELEMENTWISE, KINDS, LAYOUT, NAME_CHECKS, REDUCE, SOURCE, SOURCES,
                                 OpDef)


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


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_declares_the_fields_stages_ask_instead_of_its_name(name):
    op = OPS[name]
    if op.kind == SOURCE:
        assert op.source in SOURCES
    else:
        assert op.source == ""
    assert op.permutation is None or op.kind == LAYOUT
    assert isinstance(op.costly, bool) and isinstance(op.divides, bool)
    assert not (op.costly or op.divides) or op.kind == ELEMENTWISE


def test_a_source_op_without_its_source_field_is_refused():
    with pytest.raises(AssertionError, match="source op needs source="):
        OpDef("mystery", SOURCE, arity=0, dtypes=(), infer=lambda *a: None,
              reference=lambda *a: None)


def test_transpose_declares_its_permutation():
    assert OPS["transpose"].permutation(axes=(1, 0)) == (1, 0)
    assert OPS["broadcast_to"].permutation is None


def test_stages_ask_the_registry_not_op_names():
    # `node.op == "name"` outside the exceptions the registry lists (NAME_CHECKS) means a
    # stage branches on an op's name: declare the property in OpDef instead
    root = pathlib.Path(graphc.__file__).parent
    compare = re.compile(r"""\.op\s*(?:==|!=)\s*["'](\w+)["']""")
    member = re.compile(r"""\.op\s+(?:not\s+)?in\s+[(\[{]\s*["'](\w+)["']""")
    found: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        for line in path.read_text().splitlines():
            for match in [*compare.finditer(line), *member.finditer(line)]:
                found.setdefault(rel, set()).add(match.group(1))
    unlisted = {f: names - set(NAME_CHECKS.get(f, ())) for f, names in found.items()}
    assert {f: n for f, n in unlisted.items() if n} == {}
