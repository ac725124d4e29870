"""nn convolution / pooling / embedding layers against PyTorch's, with the same weights."""
from __future__ import annotations

import numpy as np
import pytest

import graphc
from graphc import nn

torch = pytest.importorskip("torch")


# graphc's batch norms call their affine parameters gamma and beta; its Linear weight is
# (in, out), PyTorch's (out, in)
RENAME = {"gamma": "weight", "beta": "bias"}


def torch_name(module: nn.Module, name: str) -> str:
    *path, leaf = name.split(".")
    return ".".join(path + [RENAME.get(leaf, leaf)])


def copy_from_torch(module: nn.Module, tmod) -> None:
    """PyTorch's parameters and buffers into the graphc module, by PyTorch's names."""
    ours = {torch_name(module, k): v for k, v in
            {**module.named_parameters(), **module.named_state()}.items()}
    theirs = {k: v.detach().numpy() for k, v in tmod.state_dict().items()
              if not k.endswith("num_batches_tracked")}
    linear = {k for k, m in tmod.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(ours) == set(theirs), (sorted(ours), sorted(theirs))
    for k, v in theirs.items():
        if k.rsplit(".", 1)[0] in linear and k.endswith("weight"):
            v = v.T
        assert ours[k].shape == v.shape, k
        ours[k][...] = v


def specs_of(params):
    return graphc.tree.tree_map(lambda a: graphc.tensor(a.shape, a.dtype.name), params)


def run(module, x):
    f = graphc.compile(lambda x: module(x), graphc.tensor(x.shape, x.dtype.name))
    return f(x)


@pytest.mark.parametrize("make", [
    lambda: (nn.Conv2d(4, 6, 3, padding=1), torch.nn.Conv2d(4, 6, 3, padding=1)),
    lambda: (nn.Conv2d(4, 6, (3, 2), stride=2, groups=2, bias=False),
             torch.nn.Conv2d(4, 6, (3, 2), stride=2, groups=2, bias=False)),
    lambda: (nn.Conv1d(4, 5, 3, dilation=2, padding="same"),
             torch.nn.Conv1d(4, 5, 3, dilation=2, padding="same")),
    lambda: (nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1),
             torch.nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1)),
    lambda: (nn.MaxPool2d(3, 2, 1), torch.nn.MaxPool2d(3, 2, 1)),
    lambda: (nn.AvgPool2d(2, ceil_mode=True), torch.nn.AvgPool2d(2, ceil_mode=True)),
    lambda: (nn.AdaptiveAvgPool2d((1, 1)), torch.nn.AdaptiveAvgPool2d((1, 1))),
    lambda: (nn.AdaptiveAvgPool2d(3), torch.nn.AdaptiveAvgPool2d(3)),
    lambda: (nn.Flatten(), torch.nn.Flatten()),
    lambda: (nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4)),
])
def test_layers_match_torch_with_the_same_weights(make):
    ours, theirs = make()
    torch.manual_seed(0)
    for p in theirs.parameters():     # non-trivial values, also for BatchNorm's ones/zeros
        p.data.uniform_(-1, 1)
    for name, buf in theirs.named_buffers():
        if buf.dtype.is_floating_point:
            buf.data.uniform_(0.5, 1.5)
    copy_from_torch(ours, theirs)
    rank = 3 if isinstance(ours, nn.Conv1d) else 4
    x = np.random.default_rng(1).standard_normal((2, 4, 9, 8)[:rank]).astype("float32")
    theirs.eval()
    ref = theirs(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(run(ours, x), ref, rtol=1e-5, atol=1e-5)


def test_parameter_shapes_and_default_init_follow_torch():
    for ours, theirs in [(nn.Conv2d(6, 8, 3, groups=2), torch.nn.Conv2d(6, 8, 3, groups=2)),
                         (nn.ConvTranspose2d(6, 4, 2, groups=2),
                          torch.nn.ConvTranspose2d(6, 4, 2, groups=2)),
                         (nn.Conv1d(3, 2, 5), torch.nn.Conv1d(3, 2, 5))]:
        got = ours.named_parameters()
        fan_in = theirs.weight.shape[1] * np.prod(theirs.weight.shape[2:])
        bound = 1.0 / np.sqrt(fan_in)      # kaiming_uniform(a=sqrt(5)) and the bias rule
        for k, v in theirs.named_parameters():
            assert got[k].shape == tuple(v.shape), k
            assert np.abs(got[k]).max() <= bound + 1e-7
            assert float(v.detach().abs().max()) <= bound + 1e-7    # torch's, the same rule
            if got[k].size >= 50:
                assert np.abs(got[k]).max() > 0.8 * bound and abs(got[k].mean()) < 0.3 * bound


def test_embedding_matches_torch_and_skips_the_padding_row():
    ours = nn.Embedding(10, 4, padding_idx=2)
    theirs = torch.nn.Embedding(10, 4, padding_idx=2)
    assert np.all(ours.named_parameters()["weight"][2] == 0)
    copy_from_torch(ours, theirs)
    ids = np.array([[1, 2, 2, 9], [0, 2, 5, 1]])
    seed = np.random.default_rng(2).standard_normal((2, 4, 4)).astype("float32")
    out = theirs(torch.tensor(ids))
    (out * torch.tensor(seed)).sum().backward()
    params = ours.parameters_tree()
    f = graphc.compile(graphc.value_and_grad(
        lambda p, i: graphc.sum(ours.apply(p, i) * seed)), specs_of(params),
        graphc.tensor(ids.shape, "int64"))
    val, grads = f(params, ids)
    np.testing.assert_allclose(val, float((out * torch.tensor(seed)).sum().detach()),
                               rtol=1e-5)
    np.testing.assert_allclose(grads["weight"], theirs.weight.grad.numpy(), rtol=1e-5,
                               atol=1e-6)


def test_small_cnn_training_gradients_and_running_stats_match_torch():
    """Conv2d, BatchNorm2d (training), ReLU, MaxPool2d, Flatten, Linear: the loss and every
    parameter's gradient as PyTorch computes them, and the running statistics' update."""
    ours = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    theirs = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                                 torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                                 torch.nn.Linear(4 * 4 * 4, 3))
    copy_from_torch(ours, theirs)
    x = np.random.default_rng(3).standard_normal((5, 1, 8, 8)).astype("float32")
    y = np.array([0, 2, 1, 1, 0])
    theirs.train()
    loss_t = torch.nn.functional.cross_entropy(theirs(torch.tensor(x)), torch.tensor(y))
    loss_t.backward()
    step = nn.TrainStep(ours, nn.cross_entropy, graphc.optim.SGD(0.1),
                        graphc.tensor(("B", 1, 8, 8)), graphc.tensor(("B",), "int64"))
    params = ours.parameters_tree()
    f = graphc.compile(graphc.value_and_grad(
        lambda p, x, y: nn.cross_entropy(ours.apply(p, x, training=True), y)), specs_of(params),
        graphc.tensor(x.shape), graphc.tensor(y.shape, "int64"))
    loss, grads = f(params, x, y)
    np.testing.assert_allclose(loss, loss_t.item(), rtol=1e-5)
    tgrads = {k: v.grad.numpy() for k, v in theirs.named_parameters()}
    tgrads["5.weight"] = tgrads["5.weight"].T
    names = {"1.gamma": "1.weight", "1.beta": "1.bias"}
    for k, g in grads.items():
        np.testing.assert_allclose(g, tgrads[names.get(k, k)], rtol=2e-4, atol=2e-5,
                                   err_msg=k)
    step(x, y)                          # one SGD step, and the running statistics
    torch.optim.SGD(theirs.parameters(), lr=0.1).step()
    after = {torch_name(ours, k): v for k, v in ours.named_parameters().items()}
    for k, v in theirs.named_parameters():
        want = v.detach().numpy().T if k == "5.weight" else v.detach().numpy()
        np.testing.assert_allclose(after[k], want, rtol=1e-4, atol=1e-5, err_msg=k)
    np.testing.assert_allclose(ours.named_state()["1.running_mean"],
                               theirs[1].running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.named_state()["1.running_var"],
                               theirs[1].running_var.numpy(), rtol=1e-5, atol=1e-6)


def test_bad_layer_configurations_raise():
    with pytest.raises(graphc.ShapeError, match="divisible by groups"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(graphc.ShapeError, match="channels"):
        graphc.trace(lambda x: nn.Conv2d(3, 4, 3)(x), graphc.tensor((1, 2, 5, 5)))
    with pytest.raises(graphc.ShapeError, match="padding_mode"):
        nn.Conv2d(3, 4, 3, padding_mode="reflect")
