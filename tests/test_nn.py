"""Layers, losses, optimizers and the compiled training step against numpy references."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

import graphc
from graphc import nn, optim
from graphc.nn.train import data_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def linear_regression_grads(w, b, x, y):
    """numpy gradients of mean((x @ w + b - y)^2)."""
    r = x @ w + b - y
    n = r.size
    return 2 * x.T @ r / n, 2 * r.sum(0) / n, float(np.mean(r * r))


def make(rng, n=16):
    layer = nn.Linear(3, 2, seed=1)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    y = rng.standard_normal((n, 2)).astype(np.float32)
    return layer, x, y


@pytest.mark.parametrize("opt,reference", [
    (lambda: optim.SGD(0.1), "sgd"),
    (lambda: optim.SGD(0.1, momentum=0.9), "momentum"),
    (lambda: optim.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.01), "nesterov"),
    (lambda: optim.Adam(0.01), "adam"),
    (lambda: optim.AdamW(0.01, weight_decay=0.1), "adamw"),
    (lambda: optim.RMSprop(0.01), "rmsprop"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_optimizer_steps_match_numpy(opt, reference, rng):
    layer, x, y = make(rng)
    w, b = (a.astype(np.float64).copy() for a in layer.named_parameters().values())
    step = nn.TrainStep(layer, nn.mse, opt(), data_spec(x, "x"), data_spec(y, "y"))
    state = {"v": [0, 0], "m": [0, 0], "s": [0, 0]}
    for t in range(1, 6):
        gw, gb, loss = linear_regression_grads(w, b, x, y)
        got = step(x, y)
        np.testing.assert_allclose(got, loss, rtol=1e-5)
        params = [w, b]
        for i, g in enumerate((gw, gb)):
            p = params[i]
            if reference == "sgd":
                p -= 0.1 * g
            elif reference in ("momentum", "nesterov"):
                if reference == "nesterov":
                    g = g + 0.01 * p
                state["v"][i] = 0.9 * state["v"][i] + g
                p -= 0.1 * (g + 0.9 * state["v"][i] if reference == "nesterov" else state["v"][i])
            elif reference in ("adam", "adamw"):
                state["m"][i] = 0.9 * state["m"][i] + 0.1 * g
                state["s"][i] = 0.999 * state["s"][i] + 0.001 * g * g
                upd = (state["m"][i] / (1 - 0.9 ** t)) / (np.sqrt(state["s"][i] / (1 - 0.999 ** t)) + 1e-8)
                decay = 0.01 * 0.1 * p if reference == "adamw" else 0
                p -= 0.01 * upd + decay
            elif reference == "rmsprop":
                state["s"][i] = 0.99 * state["s"][i] + 0.01 * g * g
                p -= 0.01 * g / (np.sqrt(state["s"][i]) + 1e-8)
        got_w, got_b = layer.named_parameters().values()
        np.testing.assert_allclose(got_w, w, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got_b, b, rtol=1e-4, atol=1e-6)


def test_parameters_stay_in_the_models_arrays(rng):
    layer, x, y = make(rng)
    before = {k: id(v) for k, v in layer.named_parameters().items()}
    step = nn.TrainStep(layer, nn.mse, optim.SGD(0.1), data_spec(x, "x"), data_spec(y, "y"))
    step(x, y)
    assert {k: id(v) for k, v in layer.named_parameters().items()} == before


def test_learning_rate_set_between_steps_takes_effect(rng):
    """The step skips rewriting its scalars while the learning rate is the same object; a
    new value set on the optimizer must still reach the next step (numpy SGD reference)."""
    layer, x, y = make(rng)
    w, b = [a.astype(np.float64) for a in layer.named_parameters().values()]
    opt = optim.SGD(0.1)
    step = nn.TrainStep(layer, nn.mse, opt, data_spec(x, "x"), data_spec(y, "y"))
    for lr in (0.1, 0.1, 0.5, 0.5, 0.0001, 0.2):
        opt.lr = lr
        step(x, y)
        g = 2 * (x @ w + b - y) / y.size     # Linear's weight is (in, out)
        w, b = w - lr * (x.T @ g), b - lr * g.sum(0)
    got_w, got_b = layer.named_parameters().values()
    np.testing.assert_allclose(got_w, w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_b, b, rtol=1e-5, atol=1e-6)


def test_non_finite_loss_leaves_parameters_untouched(rng):
    layer, x, y = make(rng)
    step = nn.TrainStep(layer, nn.mse, optim.Adam(0.1), data_spec(x, "x"), data_spec(y, "y"))
    step(x, y)
    snapshot = [a.copy() for a in layer.named_parameters().values()]
    slots = [s.copy() for group in step.slots for s in group]
    bad = x.copy()
    bad[0, 0] = np.nan
    assert np.isnan(step(bad, y))
    for a, b in zip(layer.named_parameters().values(), snapshot):
        np.testing.assert_array_equal(a, b)
    for a, b in zip([s for group in step.slots for s in group], slots):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("lr", [0, -1.0, float("nan"), float("inf"), "0.1"])
def test_learning_rate_must_be_finite_positive(lr):
    with pytest.raises(graphc.GraphcError, match="finite positive"):
        optim.SGD(lr)


def test_schedules():
    step = optim.StepLR(0.1, step_size=10, gamma=0.5)
    assert step(0) == 0.1 and step(10) == 0.05 and step(25) == 0.025
    cos = optim.CosineLR(1.0, total_steps=100, min_lr=0.1)
    assert cos(0) == 1.0 and abs(cos(50) - 0.55) < 1e-12 and abs(cos(100) - 0.1) < 1e-12


def test_losses_match_numpy(rng):
    logits = rng.standard_normal((6, 5)) * 30  # large logits: stability matters
    labels = rng.integers(0, 5, 6)
    target = (rng.random((6, 5)) > 0.5).astype(np.float64)
    f = graphc.compile(lambda z, l, t: (nn.cross_entropy(z, l), nn.binary_cross_entropy_with_logits(z, t),
                                        nn.binary_cross_entropy(graphc.sigmoid(z * 0.01), t),
                                        nn.mse(z, t), nn.mae(z, t)),
                       graphc.tensor((6, 5), "float64"), graphc.tensor((6,), "int64"),
                       graphc.tensor((6, 5), "float64"))
    ce, bcel, bce, mse, mae = f(logits, labels, target)
    shifted = logits - logits.max(1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    np.testing.assert_allclose(ce, -logp[np.arange(6), labels].mean(), rtol=1e-12)
    np.testing.assert_allclose(bcel, np.mean(np.logaddexp(0, logits) - logits * target), rtol=1e-12)
    p = 1 / (1 + np.exp(-logits * 0.01))
    np.testing.assert_allclose(bce, -np.mean(target * np.log(p) + (1 - target) * np.log(1 - p)),
                               rtol=1e-10)
    np.testing.assert_allclose(mse, np.mean((logits - target) ** 2))
    np.testing.assert_allclose(mae, np.mean(np.abs(logits - target)))


def test_layernorm_and_batchnorm(rng):
    x = rng.standard_normal((8, 5)).astype(np.float32) * 3 + 1
    ln = nn.LayerNorm(5)
    out = nn.Predict(ln, data_spec(x, "x"))(x)
    ref = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)

    bn = nn.Sequential(nn.BatchNorm1d(5), nn.Linear(5, 1, seed=0))
    step = nn.TrainStep(bn, nn.mse, optim.SGD(0.0 + 1e-9), data_spec(x, "x"),
                        data_spec(np.zeros((8, 1), np.float32), "y"))
    step(x, np.zeros((8, 1), np.float32))
    state = bn.named_state()
    np.testing.assert_allclose(state["0.running_mean"], 0.1 * x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(state["0.running_var"], 0.9 + 0.1 * x.var(0, ddof=1), rtol=1e-5)


def test_linear_reports_shape_mismatch_with_a_fix():
    model = nn.Model(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(graphc.ShapeError, match=r"Linear\(3, 2\) got input of shape"):
        model.predict(np.zeros((4, 5), np.float32))


def test_dataloader_batches_cover_every_sample_once(rng):
    x = np.arange(10)
    loader = nn.DataLoader(x, batch_size=4, shuffle=True, seed=3)
    batches = [b for (b,) in loader]
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches)) == list(range(10))
    with pytest.raises(graphc.GraphcError, match="different lengths"):
        nn.DataLoader(x, np.arange(9))


def test_fit_evaluate_predict_and_weights_round_trip(tmp_path, rng):
    x = rng.standard_normal((50, 4)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0], np.float32) > 0).astype(np.int64)
    model = nn.Model(nn.Sequential(nn.Linear(4, 8, seed=0), nn.ReLU(), nn.Linear(8, 2, seed=1)))
    model.compile(loss="cross_entropy", optimizer=optim.Adam(0.05), metrics=["accuracy"])
    history = model.fit(x, y, epochs=30, batch_size=16, validation_data=(x, y), verbose=0)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert history["loss"][-1] < history["loss"][0]
    assert model.evaluate(x, y)["accuracy"] > 0.9
    path = str(tmp_path / "w.npz")
    model.save_weights(path)
    pred = model.predict(x)
    other = nn.Model(nn.Sequential(nn.Linear(4, 8, seed=5), nn.ReLU(), nn.Linear(8, 2, seed=6)))
    other.load_weights(path)
    np.testing.assert_array_equal(other.predict(x), pred)
    with np.load(path, allow_pickle=False) as data:
        assert "opt/0.weight/0" in data.files and "opt_step" in data.files


def test_load_weights_rejects_mismatches(tmp_path):
    path = str(tmp_path / "w.npz")
    nn.Model(nn.Sequential(nn.Linear(4, 8))).save_weights(path)
    with pytest.raises(graphc.GraphcError, match="has shape"):
        nn.Model(nn.Sequential(nn.Linear(4, 9))).load_weights(path)
    with pytest.raises(graphc.GraphcError, match="lacks"):
        nn.Model(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 1))).load_weights(path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(graphc.GraphcError, match="not a weights file"):
        nn.Model(nn.Sequential(nn.Linear(4, 8))).load_weights(str(tmp_path / "junk.npz"))


def test_fit_stops_on_nan_and_reports_the_step(capsys):
    x = np.array([[np.nan, 1.0]], np.float32)
    model = nn.Model(nn.Sequential(nn.Linear(2, 1)))
    model.compile(loss="mse", optimizer=optim.SGD(0.1))
    history = model.fit(x, np.zeros((1, 1), np.float32), epochs=3, verbose=0)
    assert "non-finite loss" in capsys.readouterr().err and len(history["loss"]) == 1
    with pytest.raises(graphc.GraphcError, match="non-finite loss nan at epoch 1, step 2"):
        model.fit(x, np.zeros((1, 1), np.float32), epochs=1, verbose=0, on_nan="raise")


def test_xor_example_converges_for_most_seeds():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "xor.py")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    solved = int(result.stdout.strip().splitlines()[-1].split("/")[0])
    assert solved >= 9


def test_random_numbers_in_kernels_match_the_numpy_twin():
    f = graphc.compile(lambda k, x: graphc.random_uniform(k, x.shape) + x, graphc.tensor((), "int64"),
                       graphc.tensor(("B", 7)))
    x = np.zeros((33, 7), np.float32)
    for key in (0, 1, 2**40 + 3):
        np.testing.assert_array_equal(f(np.int64(key), x), graphc.evaluate(f.graph, np.int64(key), x))
    big = f(np.int64(9), np.zeros((20000, 7), np.float32))
    assert abs(big.mean() - 0.5) < 0.01 and abs(big.std() - np.sqrt(1 / 12)) < 0.01


def test_dropout_masks_fuse_scale_and_change_every_step(rng):
    x = np.ones((64, 32), np.float32)
    model = nn.Sequential(nn.Dropout(0.25), nn.Linear(32, 1, seed=0))
    step = nn.TrainStep(model, lambda p, t: graphc.mean(p * t), optim.SGD(1e-9), data_spec(x, "x"),
                        data_spec(np.ones((64, 1), np.float32), "y"))
    assert any("random_uniform" in k.ops and "where" in k.ops for k in step.kernels)
    # inference: identity; training: zero with probability p, else x / (1 - p)
    np.testing.assert_allclose(nn.Predict(nn.Dropout(0.25), data_spec(x, "x"))(x), x)
    d = nn.Dropout(0.25)
    f = graphc.compile(lambda k, v: _train_forward(d, k, v), graphc.tensor((), "int64"),
                       graphc.tensor(("B", 32)))
    a, b = f(np.int64(1), x), f(np.int64(2), x)
    assert set(np.unique(a)) == {0.0, np.float32(1 / 0.75)}
    assert abs((a == 0).mean() - 0.25) < 0.05 and not np.array_equal(a, b)


def _train_forward(module, key, x):
    with nn.bind({}, training=True, key=key):
        return module(x)


def test_digits_example_reaches_95_percent():
    pytest.importorskip("sklearn")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "digits.py")],
                            capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    assert result.returncode == 0, result.stdout + result.stderr
    accuracy = float(result.stdout.split("test accuracy")[1].split()[0])
    assert accuracy >= 0.95
    if "torch loss" in result.stdout:  # same init, batches and hyperparameters: same curve
        rows = [line.split() for line in result.stdout.splitlines() if line[:5].strip().isdigit()]
        assert rows and all(float(r[3]) < 1e-4 for r in rows[:5])


def test_labels_out_of_range_or_of_the_wrong_dtype_are_rejected(rng):
    x = rng.standard_normal((8, 4)).astype(np.float32)
    model = nn.Model(nn.Sequential(nn.Linear(4, 3)))
    model.compile(loss="cross_entropy", optimizer=optim.SGD(0.1))
    before = [a.copy() for a in model.module.named_parameters().values()]
    with pytest.raises(graphc.GraphcError, match=r"class indices in \[0, 3\), got values from 0 to 3"):
        model.fit(x, np.array([0, 1, 2, 3, 0, 1, 2, 0]), epochs=1, verbose=0)
    for a, b in zip(model.module.named_parameters().values(), before):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(graphc.GraphcError, match="labels must be int32 or int64"):
        model.fit(x, np.zeros((8,), np.float32), epochs=1, verbose=0)


def test_data_shape_mismatch_is_reported(rng):
    model = nn.Model(nn.Sequential(nn.Linear(4, 1)))
    model.compile(loss="mse", optimizer=optim.SGD(0.1))
    with pytest.raises(graphc.ShapeError, match=r"Linear\(4, 1\)"):
        model.fit(np.zeros((8, 5), np.float32), np.zeros((8, 1), np.float32), epochs=1, verbose=0)
    with pytest.raises(graphc.GraphcError):
        model.fit(np.zeros((8, 4), np.float32), np.zeros((7, 1), np.float32), epochs=1, verbose=0)


@pytest.mark.parametrize("layer,reference", [
    (nn.ReLU(), lambda x: np.maximum(x, 0)),
    (nn.LeakyReLU(0.1), lambda x: np.where(x > 0, x, 0.1 * x)),
    (nn.Sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
    (nn.Tanh(), np.tanh),
    (nn.GELU(), lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))),
    (nn.GELU("tanh"),
     lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))),
    (nn.Softmax(), lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True)),
], ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "")
def test_activation_layers(layer, reference, rng):
    x = rng.standard_normal((5, 7)).astype(np.float32)
    np.testing.assert_allclose(nn.Predict(layer, data_spec(x, "x"))(x), reference(x),
                               rtol=1e-5, atol=1e-6)


def test_initializers_are_seeded_and_scaled():
    a = nn.Linear(100, 50, init="kaiming_normal", seed=3).named_parameters()["weight"]
    b = nn.Linear(100, 50, init="kaiming_normal", seed=3).named_parameters()["weight"]
    np.testing.assert_array_equal(a, b)
    assert abs(a.std() - np.sqrt(2 / 100)) < 0.01
    x = nn.Linear(100, 50, init="xavier_uniform", seed=0).named_parameters()["weight"]
    assert np.abs(x).max() <= np.sqrt(6 / 150)
    with pytest.raises(ValueError, match="unknown initializer"):
        nn.Linear(2, 2, init="zeros")


def test_partial_last_batch_reuses_the_compiled_step(rng):
    x = rng.standard_normal((10, 3)).astype(np.float32)
    model = nn.Model(nn.Sequential(nn.Linear(3, 1)))
    model.compile(loss="mse", optimizer=optim.SGD(0.01))
    model.fit(x, x[:, :1], epochs=1, batch_size=4, verbose=0)   # batches of 4, 4, 2
    first = model._step
    model.fit(x, x[:, :1], epochs=2, batch_size=3, verbose=1)   # other sizes, same step
    assert model._step is first and first.step_count == 3 + 8


def test_module_called_inside_compile_uses_its_weights_as_constants(rng):
    model = nn.Sequential(nn.Linear(3, 8, seed=0), nn.Tanh(), nn.Dropout(0.5),
                          nn.Linear(8, 2, seed=1))
    f = graphc.compile(lambda v: model(v) * 2.0, graphc.tensor(("B", 3)))
    x = rng.standard_normal((7, 3)).astype(np.float32)
    p = {k: v.astype(np.float64) for k, v in model.named_parameters().items()}
    h = np.tanh(x @ p["0.weight"] + p["0.bias"])          # dropout is off: inference
    want = 2.0 * (h @ p["3.weight"] + p["3.bias"])
    np.testing.assert_allclose(f(x), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(graphc.GraphcError, match="inside a traced function"):
        model(x)   # numpy in, outside any trace: a clear error, not a crash
