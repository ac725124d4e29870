"""nn.RNN, nn.LSTM, nn.GRU against PyTorch: the same weights give the same outputs, final
states and parameter gradients."""
from __future__ import annotations

import numpy as np
import pytest

import graphc
from graphc import nn, optim

torch = pytest.importorskip("torch")

LAYERS = {"RNN": (nn.RNN, torch.nn.RNN), "LSTM": (nn.LSTM, torch.nn.LSTM),
          "GRU": (nn.GRU, torch.nn.GRU)}
TOL = {"rtol": 1e-5, "atol": 1e-5}


def pair(kind, *args, **kwargs):
    """A graphc layer and a torch layer with the torch layer's weights copied in by name."""
    ours, theirs = LAYERS[kind]
    torch.manual_seed(0)
    t = theirs(*args, **kwargs)
    g = ours(*args, **kwargs)
    params = g.named_parameters()
    state = t.state_dict()
    assert list(params) == list(state)
    for name, value in state.items():
        assert params[name].shape == tuple(value.shape), name
        params[name][...] = value.numpy()
    return g, t


def _np(x):
    return x.detach().numpy()


def states(kind, s):
    return list(s) if kind == "LSTM" else [s]


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_outputs_and_final_states_match_torch(kind, num_layers, batch_first, rng):
    g, t = pair(kind, 3, 5, num_layers=num_layers, batch_first=batch_first)
    shape = ("B", "T", 3) if batch_first else ("T", "B", 3)
    f = graphc.compile(lambda x: g(x), graphc.tensor(shape))
    for T, B in ((1, 2), (7, 3)):
        x = rng.standard_normal((B, T, 3) if batch_first else (T, B, 3)).astype(np.float32)
        out, s = f(x)
        want_out, want_s = t(torch.from_numpy(x))
        np.testing.assert_allclose(out, _np(want_out), **TOL)
        for a, b in zip(states(kind, s), states(kind, want_s)):
            assert a.shape == (num_layers, B, 5)
            np.testing.assert_allclose(a, _np(b), **TOL)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_given_initial_states_match_torch(kind, rng):
    g, t = pair(kind, 4, 3, num_layers=2)
    x = rng.standard_normal((5, 2, 4)).astype(np.float32)
    h0 = rng.standard_normal((2, 2, 3)).astype(np.float32)
    c0 = rng.standard_normal((2, 2, 3)).astype(np.float32)
    if kind == "LSTM":
        f = graphc.compile(lambda x, h, c: g(x, (h, c)), *[graphc.tensor(a.shape)
                                                          for a in (x, h0, c0)])
        out, s = f(x, h0, c0)
        want_out, want_s = t(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
    else:
        f = graphc.compile(lambda x, h: g(x, h), graphc.tensor(x.shape), graphc.tensor(h0.shape))
        out, s = f(x, h0)
        want_out, want_s = t(torch.from_numpy(x), torch.from_numpy(h0))
    np.testing.assert_allclose(out, _np(want_out), **TOL)
    for a, b in zip(states(kind, s), states(kind, want_s)):
        np.testing.assert_allclose(a, _np(b), **TOL)


def test_relu_rnn_without_bias_and_unbatched_input_match_torch(rng):
    g, t = pair("RNN", 3, 4, nonlinearity="relu", bias=False)
    assert list(g.named_parameters()) == ["weight_ih_l0", "weight_hh_l0"]
    x = rng.standard_normal((6, 3)).astype(np.float32)
    out, h = graphc.compile(lambda x: g(x), graphc.tensor(("T", 3)))(x)
    want_out, want_h = t(torch.from_numpy(x))
    assert out.shape == (6, 4) and h.shape == (1, 4)
    np.testing.assert_allclose(out, _np(want_out), **TOL)
    np.testing.assert_allclose(h, _np(want_h), **TOL)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_default_init_is_uniform_within_one_over_sqrt_hidden(kind):
    layer = LAYERS[kind][0](3, 16, num_layers=2)
    torch_names = list(LAYERS[kind][1](3, 16, num_layers=2).state_dict())
    assert list(layer.named_parameters()) == torch_names
    for name, value in layer.named_parameters().items():
        assert np.abs(value).max() <= 0.25 and np.abs(value).max() > 0.2, name
    again = LAYERS[kind][0](3, 16, num_layers=2)
    for a, b in zip(layer.named_parameters().values(), again.named_parameters().values()):
        np.testing.assert_array_equal(a, b)   # seeded like Linear


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_parameter_gradients_match_torch_autograd(kind, batch_first, rng):
    g, t = pair(kind, 3, 4, num_layers=2, batch_first=batch_first)

    def loss(p, x):
        out, s = g.apply(p, x)
        h_n = s[0] if kind == "LSTM" else s
        c_term = graphc.sum(s[1] * s[1]) if kind == "LSTM" else 0.0
        return graphc.mean(out * out) + graphc.sum(h_n * 0.5) + c_term

    specs = {k: graphc.tensor(v.shape) for k, v in g.parameters_tree().items()}
    shape = ("B", "T", 3) if batch_first else ("T", "B", 3)
    f = graphc.compile(graphc.value_and_grad(loss), specs, graphc.tensor(shape))
    x = rng.standard_normal((2, 6, 3) if batch_first else (6, 2, 3)).astype(np.float32)
    value, grads = f(g.parameters_tree(), x)
    out, s = t(torch.from_numpy(x))
    h_n = s[0] if kind == "LSTM" else s
    want = (out * out).mean() + (h_n * 0.5).sum()
    if kind == "LSTM":
        want = want + (s[1] * s[1]).sum()
    want.backward()
    np.testing.assert_allclose(value, want.item(), rtol=1e-5)
    for name, param in t.named_parameters():
        np.testing.assert_allclose(grads[name], param.grad.numpy(), rtol=1e-4, atol=1e-5,
                                   err_msg=name)


class Tagger(nn.Module):
    """An LSTM and a linear read-out of every step: a sequence regression model."""

    def __init__(self):
        super().__init__()
        self.lstm = self.add_child("lstm", nn.LSTM(3, 4))
        self.head = self.add_child("head", nn.Linear(4, 1, seed=3))

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out)


def test_a_training_step_updates_parameters_in_place_like_torch(rng):
    model = Tagger()
    t_lstm = torch.nn.LSTM(3, 4)
    t_head = torch.nn.Linear(4, 1)
    for name, value in t_lstm.state_dict().items():
        model.lstm.named_parameters()[name][...] = value.numpy()
    with torch.no_grad():
        t_head.weight.copy_(torch.from_numpy(model.head.named_parameters()["weight"].T.copy()))
        t_head.bias.copy_(torch.from_numpy(model.head.named_parameters()["bias"]))
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    y = rng.standard_normal((5, 2, 1)).astype(np.float32)
    step = nn.TrainStep(model, nn.mse, optim.SGD(0.5), graphc.tensor(("T", 2, 3)),
                        graphc.tensor(("T", 2, 1)))
    params = list(t_lstm.parameters()) + list(t_head.parameters())
    opt = torch.optim.SGD(params, lr=0.5)
    for _ in range(3):
        loss = step(x, y)
        opt.zero_grad()
        want = torch.mean((t_head(t_lstm(torch.from_numpy(x))[0]) - torch.from_numpy(y)) ** 2)
        want.backward()
        opt.step()
        np.testing.assert_allclose(loss, want.item(), rtol=1e-5)
    for name, value in t_lstm.state_dict().items():
        np.testing.assert_allclose(model.lstm.named_parameters()[name], value.numpy(),
                                   rtol=1e-4, atol=1e-6)


def test_wrong_feature_count_is_a_clear_error():
    layer = nn.GRU(3, 4)
    with pytest.raises(graphc.ShapeError, match=r"GRU\(3, 4\) got input of shape \(5, 2, 7\)"):
        graphc.compile(lambda x: layer(x), graphc.tensor((5, 2, 7)))


def test_unsupported_options_are_refused():
    with pytest.raises(graphc.GraphcError, match=r"LSTM\(bidirectional=True\) is not supported"):
        nn.LSTM(3, 4, bidirectional=True)
    with pytest.raises(graphc.GraphcError, match="unknown nonlinearity"):
        nn.RNN(3, 4, nonlinearity="sigmoid")


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_the_gpu_kernels_run_the_layers_as_torch_does(kind, rng):
    """The CUDA build's kernels (simulated on the CPU: tests/gpu_sim.py), the loop stepped by
    the launch plan: the same outputs and states as torch."""
    from gpu_sim import SimulatedGpu

    g, t = pair(kind, 3, 4, num_layers=2)
    sim = SimulatedGpu(lambda x: g(x), graphc.tensor(("T", "B", 3)))
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    out, *s = sim(x)   # (the simulator returns the output leaves flat)
    want_out, want_s = t(torch.from_numpy(x))
    np.testing.assert_allclose(out, _np(want_out), **TOL)
    assert len(s) == len(states(kind, want_s))
    for a, b in zip(s, states(kind, want_s)):
        np.testing.assert_allclose(a, _np(b), **TOL)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_layers_run_in_bands_of_batch_rows_on_two_threads_as_torch_does(kind, rng):
    """Big enough for the thread pool to split the loop by batch rows (row_separable)."""
    g, t = pair(kind, 16, 48, batch_first=True)
    f = graphc.compile(lambda x: g(x), graphc.tensor(("B", "T", 16)))
    assert ".rows(" in f.llvm_ir
    before = graphc.get_num_threads()
    graphc.set_num_threads(2)
    try:
        for B, T in ((64, 20), (7, 3)):
            x = rng.standard_normal((B, T, 16)).astype(np.float32)
            out, s = f(x)
            want_out, want_s = t(torch.from_numpy(x))
            np.testing.assert_allclose(out, _np(want_out), **TOL)
            for a, b in zip(states(kind, s), states(kind, want_s)):
                np.testing.assert_allclose(a, _np(b), **TOL)
    finally:
        graphc.set_num_threads(before)
