"""A training step that meets non-finite values (in the data, the labels, the gradients or the
updates) changes nothing: parameters, optimizer slots and layer state are either fully
updated or untouched."""
import numpy as np
import pytest

import graphc
from graphc import nn, optim


def snapshot(step):
    return [a.copy() for a in step._state_arrays]


def assert_untouched(step, before):
    for a, b in zip(step._state_arrays, before):
        np.testing.assert_array_equal(a, b)


def assert_all_finite(step):
    for a in step._state_arrays:
        assert np.isfinite(a).all()


def tanh_step(optimizer):
    model = nn.Sequential(nn.Linear(3, 4, seed=0), nn.Tanh(), nn.Linear(4, 1, seed=1), nn.Tanh())
    return nn.TrainStep(model, nn.mse, optimizer, graphc.tensor(("B", 3)),
                        graphc.tensor(("B", 1)))


OPTIMIZERS = [lambda: optim.SGD(0.1), lambda: optim.SGD(0.1, momentum=0.9, weight_decay=0.01),
              lambda: optim.Adam(0.01), lambda: optim.RMSprop(0.01)]


@pytest.mark.parametrize("make", OPTIMIZERS, ids=["sgd", "momentum", "adam", "rmsprop"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_data_with_a_finite_loss_changes_nothing(make, bad, rng):
    step = tanh_step(make())
    x = rng.standard_normal((4, 3)).astype(np.float32)
    y = rng.uniform(-0.5, 0.5, (4, 1)).astype(np.float32)
    step(x, y)                                   # slots hold something
    before = snapshot(step)
    x_bad = x.copy()
    x_bad[1, 2] = bad
    loss = step(x_bad, y)
    if bad != bad:   # NaN input: the loss is NaN too
        assert not np.isfinite(loss)
    assert step.skipped
    assert_untouched(step, before)
    step(x, y)                                   # a clean step still trains
    assert not step.skipped
    assert any(not np.array_equal(a, b) for a, b in zip(step._state_arrays, before))
    assert_all_finite(step)


def test_inf_in_float_targets_changes_nothing(rng):
    step = tanh_step(optim.Adam(0.01))
    x = rng.standard_normal((4, 3)).astype(np.float32)
    y = np.array([[0.1], [np.inf], [0.0], [0.2]], np.float32)
    before = snapshot(step)
    step(x, y)
    assert step.skipped
    assert_untouched(step, before)


class Norm(nn.Module):
    """||x w||: its gradient at a zero vector is 0/0 while the loss (0) is finite."""

    def __init__(self):
        super().__init__()
        self.add_param("w", np.ones((2, 2)))

    def forward(self, x):
        h = x @ self.param("w")
        return graphc.sqrt(graphc.sum(h * h, -1, keepdims=True))


def test_non_finite_gradient_from_the_model_changes_nothing():
    step = nn.TrainStep(Norm(), nn.mse, optim.SGD(0.1), graphc.tensor(("B", 2)),
                        graphc.tensor(("B", 1)))
    before = snapshot(step)
    loss = step(np.zeros((2, 2), np.float32), np.zeros((2, 1), np.float32))
    assert np.isfinite(loss) and step.skipped
    assert_untouched(step, before)


def test_an_update_that_overflows_changes_nothing(rng):
    """Adam's second moment overflows for huge gradients although they are finite."""
    model = nn.Sequential(nn.Linear(2, 1, seed=0))
    step = nn.TrainStep(model, lambda p, t: graphc.mean(p * t), optim.Adam(0.01),
                        graphc.tensor(("B", 2)), graphc.tensor(("B", 1)))
    before = snapshot(step)
    x = np.full((2, 2), 1e20, np.float32)
    y = np.full((2, 1), 1e15, np.float32)
    step(x, y)
    assert step.skipped
    assert_untouched(step, before)


def test_batchnorm_statistics_are_untouched_by_a_skipped_step(rng):
    model = nn.Sequential(nn.Linear(3, 4, seed=0), nn.BatchNorm1d(4), nn.Tanh(),
                          nn.Linear(4, 1, seed=1))
    step = nn.TrainStep(model, nn.mse, optim.SGD(0.1), graphc.tensor(("B", 3)),
                        graphc.tensor(("B", 1)))
    x = rng.standard_normal((8, 3)).astype(np.float32)
    y = rng.standard_normal((8, 1)).astype(np.float32)
    step(x, y)
    before = snapshot(step)
    running = {k: v.copy() for k, v in model.named_state().items()}
    x[0, 0] = np.inf
    step(x, y)
    assert step.skipped
    assert_untouched(step, before)
    for k, v in model.named_state().items():
        np.testing.assert_array_equal(v, running[k])


def test_a_clean_step_is_still_the_plain_update(rng):
    """The guard selects the new values unchanged: one SGD step equals numpy's."""
    model = nn.Sequential(nn.Linear(3, 2, seed=0))
    step = nn.TrainStep(model, nn.mse, optim.SGD(0.5), graphc.tensor(("B", 3)),
                        graphc.tensor(("B", 2)))
    w, b = (v.copy().astype(np.float64) for v in model.named_parameters().values())
    x = rng.standard_normal((5, 3)).astype(np.float32)
    y = rng.standard_normal((5, 2)).astype(np.float32)
    step(x, y)
    r = x @ w + b - y
    grad_w, grad_b = x.T @ (2 * r / r.size), (2 * r / r.size).sum(0)
    new_w, new_b = model.named_parameters().values()
    np.testing.assert_allclose(new_w, w - 0.5 * grad_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_b, b - 0.5 * grad_b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("on_nan", ["stop", "continue", "raise"])
def test_fit_reports_steps_with_non_finite_gradients(on_nan, rng, capsys):
    model = nn.Model(nn.Sequential(nn.Linear(3, 4, seed=0), nn.Tanh(), nn.Linear(4, 1, seed=1),
                                   nn.Tanh()))
    model.compile(loss="mse", optimizer=optim.SGD(0.1))
    x = rng.standard_normal((16, 3)).astype(np.float32)
    x[5, 1] = np.inf                             # in the first batch of 8
    y = rng.uniform(-0.5, 0.5, (16, 1)).astype(np.float32)
    if on_nan == "raise":
        with pytest.raises(graphc.GraphcError, match="non-finite gradients or updates"):
            model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0, on_nan=on_nan)
        return
    model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0, on_nan=on_nan)
    assert "non-finite gradients or updates" in capsys.readouterr().err or on_nan == "continue"
    for v in model.module.named_parameters().values():
        assert np.isfinite(v).all()
