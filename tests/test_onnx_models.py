"""Real PyTorch models through ONNX: exported with torch.onnx (the TorchScript exporter, opset
17, a symbolic batch), imported and compiled once by graphc.onnx.compile, run at two batch
sizes and compared with ONNX Runtime on the same file."""
from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import graphc.onnx  # noqa: E402

T = torch.nn
OPSET = 17


class MLP(T.Module):
    """The W5 benchmark's MLP: 784-1024-1024-10, ReLU, softmax."""

    def __init__(self, sizes=(784, 1024, 1024, 10)):
        super().__init__()
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers += [T.Linear(a, b)] + ([T.ReLU()] if i < len(sizes) - 2 else [])
        self.net = T.Sequential(*layers, T.Softmax(-1))

    def forward(self, x):
        return self.net(x)


class CNN(T.Module):
    """Two Conv-BatchNorm-ReLU-MaxPool stages and a Linear head, for 3x32x32 images."""

    def __init__(self):
        super().__init__()
        self.features = T.Sequential(
            T.Conv2d(3, 16, 3, padding=1), T.BatchNorm2d(16), T.ReLU(), T.MaxPool2d(2),
            T.Conv2d(16, 32, 3, padding=1), T.BatchNorm2d(32), T.ReLU(), T.MaxPool2d(2))
        self.head = T.Linear(32 * 8 * 8, 10)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


class Encoder(T.Module):
    """TransformerEncoderLayer(256, 4), batch first (wrapped: the TorchScript exporter turns
    the layer's own default is_causal=False into a tensor input when it is exported bare)."""

    def __init__(self):
        super().__init__()
        self.layer = T.TransformerEncoderLayer(d_model=256, nhead=4, batch_first=True)

    def forward(self, x):
        return self.layer(x)


class LSTM(T.Module):
    """LSTM(32, 64), batch first; the output sequence."""

    def __init__(self):
        super().__init__()
        self.lstm = T.LSTM(32, 64, batch_first=True)

    def forward(self, x):
        return self.lstm(x)[0]


class ResBlock(T.Module):
    """A basic residual block (two 3x3 Conv-BatchNorm, identity shortcut) followed by a
    strided one whose shortcut is a 1x1 strided Conv-BatchNorm."""

    def __init__(self, c=16):
        super().__init__()
        self.a1, self.n1 = T.Conv2d(c, c, 3, padding=1, bias=False), T.BatchNorm2d(c)
        self.a2, self.n2 = T.Conv2d(c, c, 3, padding=1, bias=False), T.BatchNorm2d(c)
        self.b1, self.m1 = T.Conv2d(c, 2 * c, 3, 2, 1, bias=False), T.BatchNorm2d(2 * c)
        self.b2, self.m2 = T.Conv2d(2 * c, 2 * c, 3, padding=1, bias=False), T.BatchNorm2d(2 * c)
        self.down = T.Sequential(T.Conv2d(c, 2 * c, 1, 2, bias=False), T.BatchNorm2d(2 * c))

    def forward(self, x):
        x = torch.relu(x + self.n2(self.a2(torch.relu(self.n1(self.a1(x))))))
        return torch.relu(self.down(x) + self.m2(self.b2(torch.relu(self.m1(self.b1(x))))))


def randomize_batchnorm(module, seed=0):
    """Running statistics and affine weights away from their identity defaults."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, T.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return module


def export(module, sample) -> bytes:
    f = io.BytesIO()
    torch.onnx.export(module.eval(), (sample,), f, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=OPSET,
                      dynamo=False)
    return f.getvalue()


def check_against_onnxruntime(module, item_shape, batches, rtol=1e-5, atol=1e-5, seed=0):
    """Exports the module, compiles it once, and compares every batch size with ORT."""
    torch.manual_seed(seed)
    model = export(module, torch.randn(batches[0], *item_shape))
    compiled = graphc.onnx.compile(model)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    for batch in batches:
        x = rng.standard_normal((batch, *item_shape)).astype(np.float32)
        want = session.run(["y"], {"x": x})[0]
        got = compiled(x)["y"]
        assert got.shape == want.shape == (batch, *want.shape[1:])
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol,
                                   err_msg=f"batch {batch}")
    return compiled


def test_w5_mlp_matches_onnxruntime_at_two_batch_sizes():
    torch.manual_seed(1)
    check_against_onnxruntime(MLP(), (784,), (3, 16))


def test_cnn_conv_batchnorm_relu_maxpool_matches_onnxruntime():
    torch.manual_seed(2)
    check_against_onnxruntime(randomize_batchnorm(CNN()), (3, 32, 32), (2, 5))


def test_transformer_encoder_layer_matches_onnxruntime():
    torch.manual_seed(3)
    check_against_onnxruntime(Encoder(), (8, 256), (2, 3))


def test_lstm_matches_onnxruntime():
    torch.manual_seed(4)
    check_against_onnxruntime(LSTM(), (7, 32), (1, 4))


def test_resnet_blocks_with_residual_adds_match_onnxruntime():
    torch.manual_seed(5)
    check_against_onnxruntime(randomize_batchnorm(ResBlock()), (16, 12, 12), (1, 3))
