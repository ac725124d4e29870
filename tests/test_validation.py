"""Bad input is refused with a clear error before it can give a silently wrong answer:
hyper-parameters, training arguments, label ranges, loss shapes, in-place aliasing, foreign
array objects."""
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import graphc
from graphc import nn, optim

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("make, message", [
    (lambda: optim.SGD(0.1, momentum=NAN), "momentum"),
    (lambda: optim.SGD(0.1, momentum=-0.5), "momentum"),
    (lambda: optim.SGD(0.1, momentum=True), "momentum"),
    (lambda: optim.SGD(0.1, weight_decay=NAN), "weight_decay"),
    (lambda: optim.SGD(0.1, weight_decay=-1e-4), "weight_decay"),
    (lambda: optim.SGD(0.1, nesterov=True), "nesterov"),
    (lambda: optim.SGD(0.1, momentum=0.9, nesterov="yes"), "nesterov"),
    (lambda: optim.SGD(INF), "learning rate"),
    (lambda: optim.Adam(0.1, betas=(NAN, 0.999)), r"betas\[0\]"),
    (lambda: optim.Adam(0.1, betas=(0.9, 1.0)), r"betas\[1\]"),
    (lambda: optim.Adam(0.1, betas=0.9), "betas"),
    (lambda: optim.Adam(0.1, eps=-1.0), "eps"),
    (lambda: optim.AdamW(0.1, weight_decay=INF), "weight_decay"),
    (lambda: optim.RMSprop(0.1, alpha=1.5), "alpha"),
    (lambda: optim.RMSprop(0.1, eps=NAN), "eps"),
    (lambda: optim.StepLR(0.1, step_size=True), "step_size"),
    (lambda: optim.StepLR(0.1, step_size=0), "step_size"),
    (lambda: optim.StepLR(0.1, step_size=5, gamma=NAN), "gamma"),
    (lambda: optim.CosineLR(0.1, total_steps=10, min_lr=0.5), "min_lr"),
    (lambda: optim.CosineLR(0.1, total_steps=2.5), "total_steps"),
])
def test_bad_hyper_parameters_are_refused(make, message):
    with pytest.raises(graphc.GraphcError, match=message):
        make()


def test_valid_hyper_parameters_still_work():
    assert optim.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=1e-4).momentum == 0.9
    assert optim.Adam(np.float32(0.01), betas=(0.0, 0.5), eps=0.0).b2 == 0.5
    assert math.isclose(optim.CosineLR(0.1, total_steps=10, min_lr=0.1)(3), 0.1)


def xor_model():
    model = nn.Model(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2)))
    model.compile(loss="cross_entropy", optimizer=optim.SGD(0.1))
    return model


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": True}, "batch_size"), ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 2.0}, "batch_size"), ({"epochs": True}, "epochs"),
    ({"epochs": -1}, "epochs"),
])
def test_fit_refuses_bad_arguments(kwargs, message):
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(graphc.GraphcError, match=message):
        xor_model().fit(x, np.zeros(4, np.int64), verbose=0, **kwargs)


def test_labels_given_as_a_list_are_range_checked():
    model = xor_model().module
    step = nn.TrainStep(model, nn.cross_entropy, optim.SGD(0.1), graphc.tensor(("B", 2)),
                        graphc.tensor(("B",), "int64"))
    before = {k: v.copy() for k, v in model.named_parameters().items()}
    with pytest.raises(graphc.GraphcError, match=r"class indices in \[0, 2\).*0 to 5"):
        step(np.zeros((2, 2), np.float32), [0, 5])
    for k, v in model.named_parameters().items():
        np.testing.assert_array_equal(v, before[k])
    assert np.isfinite(step(np.zeros((2, 2), np.float32), [0, 1]))


def test_evaluate_range_checks_labels():
    model = xor_model()
    with pytest.raises(graphc.GraphcError, match="class indices"):
        model.evaluate(np.zeros((3, 2), np.float32), np.array([0, 1, 7]))


def _loss_value(loss, pred, target):
    f = graphc.compile(loss, graphc.tensor(pred.shape, pred.dtype),
                       graphc.tensor(target.shape, target.dtype))
    return float(f(pred, target))


def test_cross_entropy_with_column_labels_is_the_row_loss(rng):
    logits = rng.standard_normal((5, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 5)
    shifted = logits - logits.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    want = -np.mean(log_probs[np.arange(5), labels])
    assert math.isclose(_loss_value(nn.cross_entropy, logits, labels), want, rel_tol=1e-5)
    assert math.isclose(_loss_value(nn.cross_entropy, logits, labels[:, None]), want,
                        rel_tol=1e-5)


@pytest.mark.parametrize("labels_shape", [(5, 2), (3,), (5, 3), ()])
def test_cross_entropy_refuses_labels_that_would_broadcast(labels_shape):
    with pytest.raises(graphc.ShapeError, match="cross_entropy: labels of shape"):
        graphc.compile(nn.cross_entropy, graphc.tensor((5, 3)),
                       graphc.tensor(labels_shape, "int64"))


@pytest.mark.parametrize("loss", [nn.mse, nn.mae, nn.binary_cross_entropy,
                                  nn.binary_cross_entropy_with_logits])
def test_losses_take_a_trailing_one_and_refuse_other_mismatches(loss, rng):
    pred = rng.uniform(0.1, 0.9, (6, 1)).astype(np.float32)
    target = rng.uniform(0.0, 1.0, 6).astype(np.float32)
    same = _loss_value(loss, pred, target[:, None])
    assert math.isclose(_loss_value(loss, pred, target), same, rel_tol=1e-6)
    assert math.isclose(_loss_value(loss, pred[:, 0], target[:, None]), same, rel_tol=1e-6)
    with pytest.raises(graphc.ShapeError, match="prediction shape"):
        graphc.compile(loss, graphc.tensor((6, 3)), graphc.tensor((6,)))


def test_mse_matches_numpy_for_column_predictions(rng):
    pred = rng.standard_normal((6, 1)).astype(np.float32)
    target = rng.standard_normal(6).astype(np.float32)
    want = np.mean((pred[:, 0] - target) ** 2)
    assert math.isclose(_loss_value(nn.mse, pred, target), want, rel_tol=1e-5)


def test_two_outputs_into_one_input_are_refused():
    with pytest.raises(graphc.CompileError, match="both written in place into input"):
        graphc.compile(lambda p: (p * 2, p + 1), graphc.tensor((3,)), inplace={0: 0, 1: 0})


class ArrayLike:
    """A foreign array object: numpy sees it only through __array__."""

    def __init__(self, array):
        self.array = array

    def __array__(self, dtype=None, copy=None):
        return self.array if dtype is None else self.array.astype(dtype)


class NeedsDetach:
    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("Can't call numpy() on Tensor that requires grad. Use "
                           "tensor.detach().numpy() instead.")


@pytest.fixture(scope="module")
def double():
    return graphc.compile(lambda x: x * 2, graphc.tensor((3,)))


def test_foreign_arrays_keep_their_dtype(double):
    x = np.arange(3, dtype=np.float32)
    np.testing.assert_array_equal(double(ArrayLike(x)), 2 * x)
    with pytest.raises(graphc.InputError, match="expected dtype float32, got int32"):
        double(ArrayLike(np.arange(3, dtype=np.int32)))
    with pytest.raises(graphc.InputError, match="expected dtype float32, got float64"):
        double(np.float64(1.0) * np.ones(3))


def test_foreign_array_errors_are_input_errors(double):
    with pytest.raises(graphc.InputError, match="detach"):
        double(NeedsDetach())


def test_python_numbers_convert_only_without_changing_kind():
    double = graphc.compile(lambda x: x * 2, graphc.tensor((3,)))
    np.testing.assert_array_equal(double([1, 2, 3]), np.array([2, 4, 6], np.float32))
    ints = graphc.compile(lambda x: x * 2, graphc.tensor((3,), "int32"))
    np.testing.assert_array_equal(ints([1, 2, 3]), np.array([2, 4, 6], np.int32))
    with pytest.raises(graphc.InputError, match="cannot be a int32 array"):
        ints([1.5, 2.0, 3.0])
    with pytest.raises(graphc.InputError, match="cannot convert"):
        double(object())


# ------------------------------------------------------------------ sizes that overflow

# Each takes x: (B, Z) and y: (Z, K); with Z = 0 the inputs are empty whatever B and K are.
SIZE_GRAPHS = {
    "matmul": lambda x, y: graphc.sum(graphc.exp(x @ y)),
    "outer": lambda x, y: graphc.sum(x, 1)[:, None] * graphc.sum(y, 0)[None, :] + 1.0,
    "rows": lambda x, y: graphc.softmax(graphc.sum(x, 1)[:, None] + graphc.sum(y, 0)[None, :]),
    "column": lambda x, y: graphc.sum(x, 1) * 2.0,
}
NUMPY = {
    "matmul": lambda x, y: np.sum(np.exp(x @ y)),
    "outer": lambda x, y: np.sum(x, 1)[:, None] * np.sum(y, 0)[None, :] + 1.0,
    "rows": lambda x, y: np.full((x.shape[0], y.shape[1]), 1.0 / y.shape[1], np.float32),
    "column": lambda x, y: np.sum(x, 1) * 2.0,
}


@pytest.fixture(scope="module")
def size_graphs():
    specs = [graphc.tensor(("B", "Z")), graphc.tensor(("Z", "K"))]
    return {name: graphc.compile(fn, *specs) for name, fn in SIZE_GRAPHS.items()}


def _realistic_or_absurd(n: int) -> bool:
    return n <= 1 << 24 or n >= 1 << 48   # (what lies between would really be allocated)


@given(st.sampled_from(sorted(SIZE_GRAPHS)), st.integers(0, 62), st.integers(0, 62))
@settings(max_examples=80, deadline=None, derandomize=True)
def test_huge_symbolic_sizes_raise_before_native_code(size_graphs, name, log_b, log_k):
    """Zero-size inputs can carry huge dims; every size the code would compute from them
    must fit in 64 bits, or the call is an InputError (or a MemoryError naming the buffer);
    otherwise the result is numpy's."""
    b, k = 2 ** log_b, 2 ** log_k
    assume(_realistic_or_absurd(b * k * 4) and _realistic_or_absurd(b * 4) and
           _realistic_or_absurd(k * 4))
    try:
        x, y = np.empty((b, 0), np.float32), np.empty((0, k), np.float32)
    except ValueError:   # numpy itself refuses such shapes
        assume(False)
    try:
        out = size_graphs[name](x, y)
    except graphc.InputError as err:
        assert "bytes, more than 64-bit sizes allow" in str(err)
        return
    except MemoryError as err:
        assert "cannot allocate" in str(err)
        return
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(out, NUMPY[name](x, y), rtol=1e-5)


def test_the_reported_overflow_is_an_input_error():
    f = graphc.compile(lambda x, w: graphc.sum(graphc.exp(x @ w)), graphc.tensor(("B", "K")),
                       graphc.tensor(("K", 16)))
    with pytest.raises(graphc.InputError, match=r"B=288230376151711744.*matmul"):
        f(np.empty((2 ** 58, 0), np.float32), np.empty((0, 16), np.float32))
    assert f(np.empty((3, 0), np.float32), np.empty((0, 16), np.float32)) == 48.0


def test_static_sizes_beyond_64_bits_are_compile_errors():
    with pytest.raises(graphc.CompileError, match="more than 64-bit sizes allow"):
        graphc.compile(lambda x: x * 2.0, graphc.tensor((2 ** 40, 2 ** 30)))


def test_graphs_equal_after_simplify_share_a_cache_entry_and_its_limits(rng):
    """Size limits name the values of the simplified graph (what the cache key covers): a
    function with a dead value loads the entry built for one without it."""
    def live(x):
        return graphc.tanh(x) * 2.0

    def with_dead_value(x):
        graphc.exp(x * 3.0)          # never used
        return graphc.tanh(x) * 2.0

    spec = graphc.tensor(("B", 5))
    first = graphc.compile(live, spec)
    second = graphc.compile(with_dead_value, spec)
    assert second.cache_hit or first.cache_hit
    x = rng.standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_allclose(second(x), np.tanh(x) * 2.0, rtol=1e-6)
