"""Bad input gives a clear exception naming the problem and the user's line; never a crash."""
from __future__ import annotations

import numpy as np
import pytest

import graphc


def test_shape_error_names_op_shapes_and_user_line():
    def model(x, w1):
        h = x @ w1  # the line the error must point at
        return h

    with pytest.raises(graphc.ShapeError) as info:
        graphc.trace(model, graphc.tensor(("B", 3)), graphc.tensor((4, 5)))
    text = str(info.value)
    assert "matmul" in text and "(B, 3) @ (4, 5)" in text and "3 != 4" in text
    assert "test_errors.py" in text and "h = x @ w1" in text and "fix:" in text


@pytest.mark.parametrize("fn,message", [
    (lambda x: x + graphc.reshape(x, (3, "B")), "do not broadcast"),
    (lambda x: graphc.sum(x, axis=3), "axis 3 is out of range"),
    (lambda x: graphc.reshape(x, (5, 7)), "cannot reshape (B, 3) into (5, 7)"),
    (lambda x: graphc.transpose(x, (0, 0)), "not a permutation"),
    (lambda x: graphc.concatenate([x, graphc.sum(x, 1)], 0), "same rank"),
    (lambda x: graphc.squeeze(x, 1), "squeeze: axis 1 has size 3"),
    (lambda x: x @ 2.0, "at least 1-D"),
    (lambda x: graphc.broadcast_to(x, (4, 3)), "cannot broadcast"),
])
def test_shape_errors(fn, message):
    with pytest.raises(graphc.ShapeError, match=None) as info:
        graphc.trace(fn, graphc.tensor(("B", 3)))
    assert message in str(info.value)
    assert "test_errors.py" in str(info.value)


def test_different_symbols_do_not_broadcast():
    with pytest.raises(graphc.ShapeError, match="symbolic sizes broadcast only"):
        graphc.trace(lambda x, y: x + y, graphc.tensor(("B", 3)), graphc.tensor(("C", 3)))


@pytest.mark.parametrize("fn,error,message", [
    (lambda x: x if x else x, graphc.TraceError, "no truth value"),
    (lambda x: [v for v in x], graphc.TraceError, "iterating"),
    (lambda x: x + "a", graphc.TraceError, "cannot use a str"),
    (lambda x: graphc.logical_and(x, x), graphc.DTypeError, "logical_and: dtype float32"),
    (lambda x: graphc.one_hot(x, 3), graphc.TraceError, "labels must be int32 or int64"),
    (lambda x: 3, graphc.TraceError, "must return tensors"),
])
def test_trace_errors(fn, error, message):
    with pytest.raises(error, match=message):
        graphc.trace(fn, graphc.tensor(("B", 3)))


def test_ops_outside_a_trace_are_rejected():
    with pytest.raises(graphc.TraceError, match="inside a function being traced"):
        graphc.constant(1.0)


@pytest.fixture(scope="module")
def add_fn():
    return graphc.compile(lambda x, y: x + y, graphc.tensor(("B", 3)), graphc.tensor(("B", 3)))


@pytest.mark.parametrize("args,message", [
    ((np.zeros((2, 3), np.float32),), "expected 2 inputs"),
    ((np.zeros((2, 3)), np.zeros((2, 3))), "input 'x': expected dtype float32, got float64"),
    ((np.zeros((2, 3), np.float32), np.zeros((3, 3), np.float32)), "symbolic dim B is 3"),
    ((np.zeros((2, 4), np.float32),) * 2, "axis 1 must have size 3, got 4"),
    ((np.zeros((2,), np.float32),) * 2, "expected rank 2"),
    (("abc", np.zeros((2, 3), np.float32)), "cannot convert str"),
    ((np.zeros((2, 3), np.int32),) * 2, "expected dtype float32, got int32"),
])
def test_bad_inputs_raise_before_native_code(add_fn, args, message):
    with pytest.raises(graphc.InputError, match=message):
        add_fn(*args)


def test_input_error_is_a_value_error(add_fn):
    with pytest.raises(ValueError):
        add_fn(np.zeros((1, 2), np.float32), np.zeros((1, 2), np.float32))


def test_non_contiguous_inputs_are_copied(add_fn, rng):
    base = rng.standard_normal((3, 8)).astype(np.float32)
    x = base.T[::2]  # shape (4, 3), strided
    assert not x.flags.c_contiguous
    np.testing.assert_array_equal(add_fn(x, x), x + x)


def test_lists_are_converted_to_the_declared_dtype(add_fn):
    out = add_fn([[1, 2, 3]], [[1, 1, 1]])
    np.testing.assert_array_equal(out, np.array([[2, 3, 4]], np.float32))


def test_unknown_target_is_an_error():
    with pytest.raises(graphc.CompileError, match="unknown target"):
        graphc.compile(lambda x: x, graphc.tensor((3,)), target="tpu")


def test_bad_specs_are_rejected():
    with pytest.raises(graphc.TraceError, match="must be graphc.tensor"):
        graphc.trace(lambda x: x, (3, 4))
    with pytest.raises(TypeError, match="unsupported dtype"):
        graphc.tensor((3,), "complex64")
    with pytest.raises(ValueError, match="negative dimension"):
        graphc.tensor((-1, 3))


def test_missing_linker_is_named(monkeypatch):
    from graphc import toolchain

    monkeypatch.delenv("GRAPHC_LINKER", raising=False)
    monkeypatch.setattr(toolchain.shutil, "which", lambda tool: None)
    monkeypatch.setattr(toolchain, "zig_cc", lambda: None)
    with pytest.raises(graphc.CompileError, match="no C compiler found(.|\n)*pip install ziglang"):
        toolchain.find_linker()
    monkeypatch.setenv("GRAPHC_LINKER", "zig")
    with pytest.raises(graphc.CompileError, match="ziglang package is not installed"):
        toolchain.find_linker()
    monkeypatch.setenv("GRAPHC_LINKER", "no-such-compiler -O2")
    with pytest.raises(graphc.CompileError, match="no-such-compiler was not found"):
        toolchain.find_linker()
