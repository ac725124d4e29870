"""In-place outputs: state (parameters, optimizer state) updated in the caller's arrays."""
from __future__ import annotations

import numpy as np
import pytest

import graphc


def sgd_step(w, x, y):
    loss, g = graphc.value_and_grad(lambda w: graphc.mean((x @ w - y) ** 2))(w)
    return loss, w - 0.1 * g


SPECS = [graphc.tensor((3, 1)), graphc.tensor(("B", 3)), graphc.tensor(("B", 1))]


def test_training_step_updates_parameters_in_place(rng):
    step = graphc.compile(sgd_step, *SPECS, inplace={1: 0})
    reference = graphc.compile(sgd_step, *SPECS)
    w = np.zeros((3, 1), np.float32)
    w_ref = w.copy()
    x = rng.standard_normal((64, 3)).astype(np.float32)
    y = x @ np.array([[1.0], [2.0], [3.0]], np.float32)
    for _ in range(50):
        loss, new_w = step(w, x, y)
        ref_loss, w_ref = reference(w_ref, x, y)
        assert new_w is w
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
        np.testing.assert_allclose(w, w_ref, rtol=1e-5, atol=1e-7)
    assert loss < 1e-3


def test_overwrite_waits_for_every_reader(rng):
    # w is read by a matmul that does not feed the update; it must still run first.
    def fn(w, x):
        return x @ w, w * 2.0 + 1.0

    compiled = graphc.compile(fn, graphc.tensor((4, 4)), graphc.tensor((4, 4)), inplace={1: 0})
    w = rng.standard_normal((4, 4)).astype(np.float32)
    x = rng.standard_normal((4, 4)).astype(np.float32)
    expected = (x @ w, w * 2 + 1)
    out, new_w = compiled(w, x)
    np.testing.assert_allclose(out, expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w, expected[1])


def test_overwrite_with_a_transposed_read_goes_through_a_copy(rng):
    compiled = graphc.compile(lambda w: graphc.transpose(w) + w, graphc.tensor((5, 5)),
                              inplace={0: 0})
    w = rng.standard_normal((5, 5)).astype(np.float32)
    expected = w.T + w
    compiled(w)
    np.testing.assert_allclose(w, expected)


def test_in_place_input_must_be_a_writable_exact_array():
    step = graphc.compile(sgd_step, *SPECS, inplace={1: 0})
    x = np.ones((2, 3), np.float32)
    y = np.ones((2, 1), np.float32)
    with pytest.raises(graphc.InputError, match="updated in place"):
        step(np.zeros((3, 1)), x, y)  # float64
    ro = np.zeros((3, 1), np.float32)
    ro.flags.writeable = False
    with pytest.raises(graphc.InputError, match="writeable=False"):
        step(ro, x, y)
    with pytest.raises(graphc.InputError, match="updated in place"):
        step([[0.0], [0.0], [0.0]], x, y)


def test_in_place_input_may_not_share_memory_with_another_input():
    compiled = graphc.compile(lambda w, v: w + v, graphc.tensor((4,)), graphc.tensor((4,)),
                              inplace={0: 0})
    w = np.ones(4, np.float32)
    with pytest.raises(graphc.InputError, match="shares memory"):
        compiled(w, w)


def test_alias_types_must_match():
    with pytest.raises(graphc.CompileError, match="types differ"):
        graphc.compile(lambda w: graphc.sum(w), graphc.tensor((3,)), inplace={0: 0})
