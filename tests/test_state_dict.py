"""Module.state_dict / load_state_dict: PyTorch's names, shapes and layouts, in both
directions, and clear errors for names and shapes that do not match."""
from __future__ import annotations

import numpy as np
import pytest

import graphc
from graphc import nn


def torch_state(module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def pairs(torch):
    """(graphc module, the torch module with the same structure), built fresh."""
    return {
        "linear": (lambda: nn.Linear(3, 4), lambda: torch.nn.Linear(3, 4)),
        "linear_no_bias": (lambda: nn.Linear(3, 4, bias=False),
                           lambda: torch.nn.Linear(3, 4, bias=False)),
        "layer_norm": (lambda: nn.LayerNorm(5), lambda: torch.nn.LayerNorm(5)),
        "batch_norm": (lambda: nn.BatchNorm1d(3), lambda: torch.nn.BatchNorm1d(3)),
        "sequential": (lambda: nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.LayerNorm(6),
                                             nn.BatchNorm1d(6), nn.Dropout(0.2),
                                             nn.Linear(6, 2)),
                       lambda: torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(),
                                                   torch.nn.LayerNorm(6),
                                                   torch.nn.BatchNorm1d(6),
                                                   torch.nn.Dropout(0.2),
                                                   torch.nn.Linear(6, 2))),
        "multihead_attention": (lambda: nn.MultiheadAttention(8, 2),
                                lambda: torch.nn.MultiheadAttention(8, 2, batch_first=True)),
        "multihead_attention_kdim": (
            lambda: nn.MultiheadAttention(8, 2, kdim=3, vdim=5, bias=False),
            lambda: torch.nn.MultiheadAttention(8, 2, kdim=3, vdim=5, bias=False)),
        "encoder_layer": (lambda: nn.TransformerEncoderLayer(8, 2, 16),
                          lambda: torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)),
        "conv_net": (lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4),
                                           nn.ReLU(), nn.Conv1d(4, 2, 2, groups=2),
                                           nn.ConvTranspose2d(2, 3, 2, stride=2),
                                           nn.Embedding(5, 3)),
                     lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1),
                                                 torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                                 torch.nn.Conv1d(4, 2, 2, groups=2),
                                                 torch.nn.ConvTranspose2d(2, 3, 2, stride=2),
                                                 torch.nn.Embedding(5, 3))),
    }


CASES = ["linear", "linear_no_bias", "layer_norm", "batch_norm", "sequential",
         "multihead_attention", "multihead_attention_kdim", "encoder_layer", "conv_net"]


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("case", CASES)
def test_names_shapes_and_dtypes_match_torch(case, torch):
    ours, theirs = (make() for make in pairs(torch)[case])
    got = ours.state_dict()
    want = theirs.state_dict()
    assert list(got) == list(want)   # the same names, in torch's order
    for name, value in want.items():
        assert got[name].shape == tuple(value.shape), name
        assert got[name].dtype == value.numpy().dtype, name


@pytest.mark.parametrize("case", CASES)
def test_torch_state_loads_into_graphc_and_back(case, torch):
    ours, theirs = (make() for make in pairs(torch)[case])
    torch.manual_seed(3)
    with torch.no_grad():   # non-default values everywhere, buffers included
        for value in theirs.state_dict().values():
            if value.dtype == torch.int64:
                value.fill_(7)
            else:
                value.copy_(torch.randn(value.shape).abs() + 0.1)
    want = torch_state(theirs)
    ours.load_state_dict(want)
    got = ours.state_dict()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    fresh = pairs(torch)[case][1]()
    fresh.load_state_dict({k: torch.tensor(v) for k, v in got.items()})
    for name, value in fresh.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), want[name], err_msg=name)


@pytest.mark.parametrize("case", CASES)
def test_graphc_state_goes_through_torch_and_back(case, torch):
    make_ours, make_theirs = pairs(torch)[case]
    ours = make_ours()
    arrays = list(ours.named_parameters().values()) + list(ours.named_state().values())
    for i, value in enumerate(arrays):   # distinct values everywhere, buffers included
        value[...] = np.random.default_rng(i).standard_normal(value.shape)
    theirs = make_theirs()
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    other = make_ours()
    other.load_state_dict(torch_state(theirs))
    for (name, got), want in zip(other.named_parameters().items(),
                                 ours.named_parameters().values()):
        np.testing.assert_array_equal(got, want, err_msg=name)
    for (name, got), want in zip(other.named_state().items(), ours.named_state().values()):
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_loaded_model_computes_what_torch_computes(torch, rng):
    ours, theirs = (make() for make in pairs(torch)["sequential"])
    torch.manual_seed(0)
    with torch.no_grad():
        theirs[3].running_mean.copy_(torch.randn(6))
        theirs[3].running_var.copy_(torch.rand(6) + 0.5)
        theirs[3].weight.copy_(torch.randn(6))
    theirs.eval()
    ours.load_state_dict(torch_state(theirs))
    x = rng.standard_normal((5, 4)).astype(np.float32)
    got = graphc.compile(lambda v: ours(v), graphc.tensor(("B", 4)))(x)
    with torch.no_grad():
        want = theirs(torch.tensor(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_linear_weight_is_transposed_to_torchs_layout():
    layer = nn.Linear(3, 2)
    ours = layer.named_parameters()["weight"]
    assert ours.shape == (3, 2)
    np.testing.assert_array_equal(layer.state_dict()["weight"], ours.T)
    new = np.arange(6, dtype=np.float64).reshape(2, 3)     # torch's (out, in)
    layer.load_state_dict({"weight": new, "bias": np.zeros(2)})
    np.testing.assert_array_equal(ours, new.T)


def test_load_copies_in_place_with_the_modules_dtype():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    arrays = {k: id(v) for k, v in model.named_parameters().items()}
    state = {k: np.full(v.shape, 0.5, np.float64) for k, v in model.state_dict().items()}
    state["1.num_batches_tracked"] = np.array(11)
    model.load_state_dict(state)
    assert {k: id(v) for k, v in model.named_parameters().items()} == arrays
    for name, value in model.named_parameters().items():
        assert value.dtype == np.float32 and np.all(value == 0.5), name
    np.testing.assert_array_equal(model.named_state()["1.running_var"], 0.5)
    saved = model.state_dict()
    assert saved["1.num_batches_tracked"].dtype == np.int64
    assert saved["1.num_batches_tracked"] == 11


def test_state_dict_returns_copies():
    layer = nn.LayerNorm(4)
    state = layer.state_dict()
    state["weight"][...] = 9.0
    np.testing.assert_array_equal(layer.named_parameters()["gamma"], 1.0)


def test_missing_and_unexpected_names_are_listed():
    layer = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
    state = layer.state_dict()
    del state["1.bias"]
    state["1.gamma"] = np.ones(2)
    with pytest.raises(graphc.GraphcError, match=r"missing \['1.bias'\]; unexpected "
                                                 r"\['1.gamma'\]") as info:
        layer.load_state_dict(state)
    assert "test_state_dict.py" in str(info.value) and "strict=False" in str(info.value)
    result = layer.load_state_dict(state, strict=False)
    assert result.missing_keys == ["1.bias"] and result.unexpected_keys == ["1.gamma"]


def test_a_wrong_shape_names_the_key_and_loads_nothing():
    layer = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 4))
    before = {k: v.copy() for k, v in layer.named_parameters().items()}
    state = {k: np.ones_like(v) for k, v in layer.state_dict().items()}
    state["1.weight"] = np.ones((2, 4))     # graphc's layout, not torch's (4, 2)
    with pytest.raises(graphc.ShapeError, match=r"'1.weight' has shape \(2, 4\), the "
                                                r"module's is \(4, 2\)"):
        layer.load_state_dict(state)
    for name, value in layer.named_parameters().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_load_state_dict_needs_a_mapping():
    with pytest.raises(graphc.GraphcError, match="expected a dict of arrays"):
        nn.Linear(2, 2).load_state_dict([np.zeros((2, 2))])


def test_torch_tensors_load_directly(torch):
    theirs = torch.nn.Linear(3, 2)
    ours = nn.Linear(3, 2)
    ours.load_state_dict(theirs.state_dict())
    np.testing.assert_array_equal(ours.state_dict()["weight"], theirs.weight.detach().numpy())


def test_training_after_loading_updates_the_loaded_arrays(rng):
    from graphc import optim
    from graphc.nn.train import data_spec
    model = nn.Sequential(nn.Linear(3, 1))
    model.load_state_dict({"0.weight": np.ones((1, 3)), "0.bias": np.zeros(1)})
    x = rng.standard_normal((8, 3)).astype(np.float32)
    y = np.zeros((8, 1), np.float32)
    step = nn.TrainStep(model, nn.mse, optim.SGD(0.1), data_spec(x, "x"), data_spec(y, "y"))
    step(x, y)
    weight = model.state_dict()["0.weight"]
    gradient = 2 * (x @ np.ones(3))[:, None].T @ x / 8           # d mse / d weight
    np.testing.assert_allclose(weight, 1.0 - 0.1 * gradient, rtol=1e-5)


def test_loaded_conv_net_computes_what_torch_computes(torch, rng):
    theirs = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                                 torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3))
    torch.manual_seed(0)
    with torch.no_grad():
        theirs[1].running_mean.copy_(torch.randn(4))
        theirs[1].running_var.copy_(torch.rand(4) + 0.5)
    theirs.eval()
    ours = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 2, 3))
    ours.load_state_dict(torch_state(theirs))
    x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    got = graphc.compile(lambda v: ours(v), graphc.tensor(x.shape))(x)
    with torch.no_grad():
        want = theirs(torch.tensor(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
