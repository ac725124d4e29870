"""graphc.onnx's op table beyond ONNX's node tests (tests/test_onnx_conformance.py): symbolic
sizes, exported models and errors, each checked against onnxruntime. One section per op
family."""
from __future__ import annotations

import io

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the onnx package is not installed "
                                         "(pip install 'graphc[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import graphc.onnx  # noqa: E402


# nn ops

def _nn_model(nodes, inputs, outputs, inits=(), opset=17):
    """A model of `nodes`; inputs/outputs as (name, shape) with str entries symbolic."""
    def info(name, shape):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
    graph = helper.make_graph(nodes, "nn_ops", [info(*i) for i in inputs],
                              [info(*o) for o in outputs],
                              [numpy_helper.from_array(a, n) for n, a in inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return model


def _nn_against_onnxruntime(model, feeds_per_run, rtol=1e-5):
    """One graphc compile of the model, run on each feed dict, against onnxruntime."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    compiled = graphc.onnx.compile(model)
    names = [o.name for o in model.graph.output]
    for feeds in feeds_per_run:
        want = sess.run(names, feeds)
        got = compiled(*feeds.values())
        for name, w in zip(names, want):
            assert got[name].shape == w.shape, name
            np.testing.assert_allclose(got[name], w, rtol=rtol,
                                       atol=rtol * max(1.0, float(np.abs(w).max())),
                                       err_msg=name)


def _nn_weights(rng, *shapes):
    return [rng.standard_normal(s).astype(np.float32) * 0.5 for s in shapes]


def test_conv_batchnorm_pools_serve_every_batch_size():
    rng = np.random.default_rng(0)
    w, b, scale, shift, var = _nn_weights(rng, (4, 3, 3, 3), (4,), (4,), (4,), (4,))
    mean = rng.standard_normal(4).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 0, 2, 1], strides=[2, 1],
                         dilations=[1, 2]),
        helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["bn"],
                         epsilon=1e-3),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["m"], kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1], ceil_mode=1),
        helper.make_node("AveragePool", ["m"], ["a"], kernel_shape=[2, 2],
                         pads=[1, 0, 0, 1], count_include_pad=0),
        helper.make_node("GlobalAveragePool", ["a"], ["g"]),
    ]
    inits = [("w", w), ("b", b), ("scale", scale), ("shift", shift), ("mean", mean),
             ("var", np.abs(var) + 0.5)]
    model = _nn_model(nodes, [("x", ["N", 3, 11, 9])], [("a", None), ("g", None)], inits)
    _nn_against_onnxruntime(model, [{"x": rng.standard_normal((n, 3, 11, 9))
                                     .astype(np.float32)} for n in (1, 4)])


def test_conv1d_same_lower_groups_and_conv_transpose_serve_every_batch_size():
    rng = np.random.default_rng(1)
    w, wt, bt = _nn_weights(rng, (6, 2, 4), (6, 2, 3), (4,))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], auto_pad="SAME_LOWER", group=2),
        helper.make_node("ConvTranspose", ["c", "wt", "bt"], ["y"], strides=[3],
                         pads=[1, 0], output_padding=[2], group=2),
    ]
    model = _nn_model(nodes, [("x", ["N", 4, 10])], [("y", None)], [("w", w), ("wt", wt),
                                                                     ("bt", bt)])
    _nn_against_onnxruntime(model, [{"x": rng.standard_normal((n, 4, 10)).astype(np.float32)}
                                    for n in (2, 3)])


def test_conv3d_and_pools_3d_serve_every_batch_size():
    rng = np.random.default_rng(6)
    (w,) = _nn_weights(rng, (4, 2, 3, 3, 2))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 0, 1, 0, 1], strides=[1, 2, 1]),
        helper.make_node("MaxPool", ["c"], ["m"], kernel_shape=[2, 2, 2], dilations=[2, 1, 1]),
        helper.make_node("AveragePool", ["c"], ["a"], kernel_shape=[3, 1, 2],
                         strides=[2, 1, 1], pads=[1, 0, 0, 1, 0, 1], count_include_pad=1),
    ]
    model = _nn_model(nodes, [("x", ["N", 2, 5, 6, 4])], [("m", None), ("a", None)],
                      [("w", w)])
    _nn_against_onnxruntime(model, [{"x": rng.standard_normal((n, 2, 5, 6, 4))
                                     .astype(np.float32)} for n in (1, 3)])


def test_same_padding_serves_every_image_size():
    """Stride-1 SAME padding keeps symbolic heights and widths symbolic: one compile."""
    rng = np.random.default_rng(7)
    (w,) = _nn_weights(rng, (4, 3, 3, 3))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], auto_pad="SAME_UPPER"),
             helper.make_node("MaxPool", ["c"], ["y"], kernel_shape=[2, 3],
                              auto_pad="SAME_LOWER")]
    model = _nn_model(nodes, [("x", ["N", 3, "H", "W"])], [("y", None)], [("w", w)])
    _nn_against_onnxruntime(model, [{"x": rng.standard_normal(s).astype(np.float32)}
                                    for s in ((1, 3, 5, 6), (2, 3, 9, 4))])


def test_deform_conv_serves_every_batch_size():
    rng = np.random.default_rng(10)
    w, b = _nn_weights(rng, (6, 2, 3, 2), (6,))
    node = helper.make_node("DeformConv", ["x", "w", "offset", "b", "mask"], ["y"],
                            group=2, offset_group=2, strides=[2, 1], pads=[1, 0, 1, 1],
                            dilations=[1, 2])
    graph = helper.make_graph([node], "deform", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 7, 6]),
        helper.make_tensor_value_info("offset", TensorProto.FLOAT, ["N", 24, 4, 5]),
        helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 12, 4, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    feeds = [{"x": rng.standard_normal((n, 4, 7, 6)).astype(np.float32),
              "offset": rng.uniform(-2.5, 2.5, (n, 24, 4, 5)).astype(np.float32),
              "mask": rng.uniform(0, 1, (n, 12, 4, 5)).astype(np.float32)} for n in (1, 3)]
    _nn_against_onnxruntime(model, feeds)


def test_maxpool_indices_serve_every_batch_size():
    nodes = [helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[3, 2],
                              strides=[2, 2], pads=[1, 0, 1, 1])]
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 2, 7, 6])], [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
        helper.make_tensor_value_info("i", TensorProto.INT64, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.default_rng(2)
    _nn_against_onnxruntime(model, [{"x": rng.standard_normal((n, 2, 7, 6))
                                     .astype(np.float32)} for n in (1, 3)])


def test_maxunpool_undoes_overlapping_maxpool_at_every_batch_size():
    """Overlapping windows pick some positions twice: each still gets its value once."""
    pool = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    nodes = [helper.make_node("MaxPool", ["x"], ["y", "i"], **pool),
             helper.make_node("MaxUnpool", ["y", "i"], ["u"], **pool)]
    graph = helper.make_graph(nodes, "unpool", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 2, 7, 7])], [
        helper.make_tensor_value_info("u", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.default_rng(9)
    _nn_against_onnxruntime(model, [{"x": rng.standard_normal((n, 2, 7, 7))
                                     .astype(np.float32)} for n in (1, 3)])


def _nn_recurrent_model(kind, direction, layout=0, seq_lens=False, **attrs):
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[kind]
    dirs, hidden, features = (2 if direction == "bidirectional" else 1), 5, 3
    rng = np.random.default_rng(3)
    w, r, b, h0 = _nn_weights(rng, (dirs, gates * hidden, features),
                              (dirs, gates * hidden, hidden), (dirs, 2 * gates * hidden),
                              (dirs, 1, hidden))
    seq = ["B", "T", features] if layout else ["T", "B", features]
    names = ["x", "w", "r", "b", "lens" if seq_lens else "", "h0"]
    inits = [("w", w), ("r", r), ("b", b)]
    inputs = [("x", seq), ("h0", ["B", dirs, hidden] if layout else [dirs, "B", hidden])]
    if kind == "LSTM":
        names += ["c0", "p"]
        inputs.append(("c0", inputs[-1][1]))
        inits.append(("p", _nn_weights(rng, (dirs, 3 * hidden))[0]))
    outs = ["y", "y_h"] + (["y_c"] if kind == "LSTM" else [])
    node = helper.make_node(kind, names, outs, hidden_size=hidden, direction=direction,
                            layout=layout, **attrs)
    graph = helper.make_graph(
        [node], "recurrent",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs] +
        ([helper.make_tensor_value_info("lens", TensorProto.INT32, ["B"])] if seq_lens
         else []),
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
        [numpy_helper.from_array(a, n) for n, a in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), dirs, hidden


def _nn_recurrent_feeds(model, kind, dirs, hidden, layout, sizes, lens=None):
    rng = np.random.default_rng(4)
    runs = []
    for t, b in sizes:
        x = rng.standard_normal((b, t, 3) if layout else (t, b, 3)).astype(np.float32)
        state = (b, dirs, hidden) if layout else (dirs, b, hidden)
        feeds = {"x": x, "h0": rng.standard_normal(state).astype(np.float32)}
        if kind == "LSTM":
            feeds["c0"] = rng.standard_normal(state).astype(np.float32)
        if lens is not None:
            feeds["lens"] = lens(t, b)
        runs.append(feeds)
    return runs


def _nn_input_order(model):
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


@pytest.mark.parametrize("kind, direction, attrs", [
    ("LSTM", "bidirectional", {}),
    ("LSTM", "reverse", {"clip": 0.7}),
    ("GRU", "bidirectional", {"linear_before_reset": 1}),
    ("GRU", "forward", {}),
    ("RNN", "bidirectional", {"activations": ["Relu", "Tanh"]}),
    ("LSTM", "forward", {"input_forget": 1}),
    ("GRU", "bidirectional", {"activations": ["HardSigmoid", "LeakyRelu", "Sigmoid",
                                              "ScaledTanh"],
                              "activation_alpha": [0.3, 0.05, 0.8],
                              "activation_beta": [0.4, 1.5]}),
], ids=["lstm_bidirectional", "lstm_reverse_clip", "gru_linear_before_reset", "gru_forward",
        "rnn_relu_tanh", "lstm_input_forget", "gru_activations_alpha_beta"])
def test_recurrent_serves_every_batch_size_and_sequence_length(kind, direction, attrs):
    model, dirs, hidden = _nn_recurrent_model(kind, direction, **attrs)
    feeds = _nn_recurrent_feeds(model, kind, dirs, hidden, 0, [(3, 2), (8, 5)])
    order = _nn_input_order(model)
    _nn_against_onnxruntime(model, [{k: f[k] for k in order} for f in feeds])


class _BatchFirst:
    """The layout=0 twin of a layout=1 model, run by onnxruntime (which has no layout=1) on
    the feeds and results swapped between (B, T | directions) and (T | directions, B)."""

    def __init__(self, model):
        self.names = [o.name for o in model.graph.output]
        self.sess = ort.InferenceSession(model.SerializeToString(),
                                         providers=["CPUExecutionProvider"])

    def run(self, feeds):
        want = self.sess.run(self.names, {k: np.swapaxes(v, 0, 1) for k, v in feeds.items()})
        return [np.moveaxis(want[0], 2, 0)] + [np.swapaxes(w, 0, 1) for w in want[1:]]


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_recurrent_layout_1_is_batch_first(kind):
    model, dirs, hidden = _nn_recurrent_model(kind, "bidirectional", layout=1)
    twin = _BatchFirst(_nn_recurrent_model(kind, "bidirectional", layout=0)[0])
    compiled = graphc.onnx.compile(model)
    order = _nn_input_order(model)
    for feeds in _nn_recurrent_feeds(model, kind, dirs, hidden, 1, [(3, 2), (6, 4)]):
        feeds = {k: feeds[k] for k in order}
        got = compiled(*feeds.values())
        for name, w in zip(twin.names, twin.run(feeds)):
            np.testing.assert_allclose(got[name], w, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_sequence_lens_of_different_lengths_match_onnxruntime(kind):
    model, dirs, hidden = _nn_recurrent_model(kind, "bidirectional", seq_lens=True)
    lens = lambda t, b: np.array([t, 1, t - 2, 2, t][:b], np.int32)  # noqa: E731
    feeds = _nn_recurrent_feeds(model, kind, dirs, hidden, 0, [(4, 3), (6, 5)], lens)
    order = _nn_input_order(model)
    _nn_against_onnxruntime(model, [{k: f[k] for k in order} for f in feeds])


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_torch_recurrent_export_matches_onnxruntime(kind):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    layer = getattr(torch.nn, kind)(5, 7, num_layers=2, batch_first=True,
                                    bidirectional=True).eval()
    outputs = ["y", "h"] + (["c"] if kind == "LSTM" else [])
    buf = io.BytesIO()
    torch.onnx.export(layer, (torch.randn(2, 3, 5),), buf, dynamo=False, input_names=["x"],
                      output_names=outputs, dynamic_axes={"x": {0: "B", 1: "T"},
                                                          "y": {0: "B", 1: "T"}})
    model = onnx.load_from_string(buf.getvalue())
    assert kind in {n.op_type for n in model.graph.node}
    rng = np.random.default_rng(5)
    _nn_against_onnxruntime(model, [{"x": rng.standard_normal((b, t, 5)).astype(np.float32)}
                                    for b, t in ((2, 3), (4, 9))])


def test_torch_cnn_export_matches_onnxruntime():
    """Conv (strided, dilated depthwise), GroupNorm (exported as InstanceNormalization),
    ConvTranspose, BatchNorm, ceil_mode pools, LayerNormalization: torch's export, two
    batch sizes."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.group_norm = nn.GroupNorm(2, 8)
            self.depthwise = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
            self.instance_norm = nn.InstanceNorm2d(8, affine=True)
            self.up = nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)
            self.batch_norm = nn.BatchNorm2d(4)
            self.avg = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True,
                                    count_include_pad=False)
            self.max = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
            self.layer_norm = nn.LayerNorm(4)

        def forward(self, x):
            x = torch.relu(self.group_norm(self.conv(x)))
            x = torch.sigmoid(self.instance_norm(self.depthwise(x)))
            x = self.batch_norm(self.up(x))
            pooled = nn.functional.adaptive_avg_pool2d(self.avg(x) + self.max(x), 1)
            return self.layer_norm(pooled.flatten(1))

    torch.manual_seed(0)
    net = Net().eval()
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.randn(2, 3, 16, 16),), buf, dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    model = onnx.load_from_string(buf.getvalue())
    rng = np.random.default_rng(8)
    _nn_against_onnxruntime(model, [{"x": rng.standard_normal((n, 3, 16, 16))
                                     .astype(np.float32)} for n in (1, 5)])


def _nn_attention_check(node, inputs, sizes, opset=23):
    """inputs: (name, shape) with str sizes symbolic; sizes: one {symbol: int} per run."""
    graph = helper.make_graph(
        [node], "attention", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                              for n, s in inputs],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in node.output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    rng = np.random.default_rng(11)
    _nn_against_onnxruntime(model, [
        {n: rng.standard_normal([env.get(d, d) for d in s]).astype(np.float32)
         for n, s in inputs} for env in sizes])


def test_attention_with_past_and_grouped_heads_serves_every_batch_size():
    node = helper.make_node("Attention", ["q", "k", "v", "", "past_k", "past_v"],
                            ["y", "present_k", "present_v"], is_causal=1)
    _nn_attention_check(node, [("q", ["B", 4, 3, 8]), ("k", ["B", 2, 3, 8]),
                               ("v", ["B", 2, 3, 8]), ("past_k", ["B", 2, 2, 8]),
                               ("past_v", ["B", 2, 2, 8])], [{"B": 1}, {"B": 3}])


def test_attention_3d_serves_every_batch_size_and_sequence_length():
    node = helper.make_node("Attention", ["q", "k", "v", "mask"], ["y"], is_causal=1,
                            q_num_heads=4, kv_num_heads=2, softcap=2.0)
    _nn_attention_check(node, [("q", ["B", "S", 16]), ("k", ["B", "S", 8]),
                               ("v", ["B", "S", 8]), ("mask", ["S", "S"])],
                        [{"B": 1, "S": 3}, {"B": 2, "S": 6}])


def test_torch_interpolate_export_serves_every_batch_size():
    """Resize from torch's F.interpolate: bilinear (half_pixel), bicubic with align_corners,
    nearest by scale factor."""
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional

    class Up(torch.nn.Module):
        def forward(self, x):
            a = functional.interpolate(x, size=(9, 7), mode="bilinear", align_corners=False)
            b = functional.interpolate(x, size=(9, 7), mode="bicubic", align_corners=True)
            c = functional.interpolate(x, scale_factor=(3, 2), mode="nearest")
            return a + b, c

    buf = io.BytesIO()
    torch.onnx.export(Up(), (torch.randn(2, 3, 5, 4),), buf, dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["ab", "c"],
                      dynamic_axes={"x": {0: "N"}, "ab": {0: "N"}, "c": {0: "N"}})
    model = onnx.load_from_string(buf.getvalue())
    assert "Resize" in {n.op_type for n in model.graph.node}
    rng = np.random.default_rng(12)
    _nn_against_onnxruntime(model, [{"x": rng.standard_normal((n, 3, 5, 4))
                                     .astype(np.float32)} for n in (1, 3)])


def test_linear_attention_serves_every_batch_size_and_sequence_length():
    """One compile for every (B, T), against ONNX's reference evaluator (onnxruntime has no
    LinearAttention)."""
    from onnx.reference import ReferenceEvaluator
    node = helper.make_node("LinearAttention", ["q", "k", "v", "state", "decay", "beta"],
                            ["y", "present"], q_num_heads=4, kv_num_heads=2,
                            update_rule="gated_delta")
    shapes = {"q": ["B", "T", 12], "k": ["B", "T", 6], "v": ["B", "T", 8],
              "state": ["B", 2, 3, 4], "decay": ["B", "T", 2], "beta": ["B", "T", 2]}
    graph = helper.make_graph(
        [node], "linear_attention",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in shapes.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in node.output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 27)])
    compiled = graphc.onnx.compile(model)
    reference = ReferenceEvaluator(model)
    rng = np.random.default_rng(13)
    for b, t in ((1, 3), (2, 7)):
        feeds = {n: rng.standard_normal([{"B": b, "T": t}.get(d, d) for d in s])
                 .astype(np.float32) * 0.5 for n, s in shapes.items()}
        feeds["decay"] = -np.abs(feeds["decay"])
        feeds["beta"] = 1.0 / (1.0 + np.exp(-feeds["beta"]))
        got = compiled(*feeds.values())
        for name, want in zip(["y", "present"], reference.run(None, feeds)):
            np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5, err_msg=name)


# (cubic with border padding is left out: onnxruntime's differs from ONNX's reference, which
# graphc follows and the node tests check)
@pytest.mark.parametrize("attrs", [
    dict(mode="linear", padding_mode="zeros", align_corners=0),
    dict(mode="linear", padding_mode="border", align_corners=1),
    dict(mode="cubic", padding_mode="zeros", align_corners=1),
    dict(mode="nearest", padding_mode="reflection", align_corners=0),
], ids=["linear_zeros", "linear_border", "cubic_zeros", "nearest_reflection"])
def test_grid_sample_serves_every_batch_size(attrs):
    node = helper.make_node("GridSample", ["x", "grid"], ["y"], **attrs)
    graph = helper.make_graph([node], "grid_sample", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 6]),
        helper.make_tensor_value_info("grid", TensorProto.FLOAT, ["N", 4, 3, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    rng = np.random.default_rng(14)
    _nn_against_onnxruntime(model, [
        {"x": rng.standard_normal((n, 2, 5, 6)).astype(np.float32),
         "grid": rng.uniform(-1.4, 1.4, (n, 4, 3, 2)).astype(np.float32)} for n in (1, 3)])


def test_same_padding_with_stride_on_a_symbolic_size_names_the_node():
    w = np.ones((2, 1, 3, 3), np.float32)
    model = _nn_model([helper.make_node("Conv", ["x", "w"], ["y"], name="stem",
                                        auto_pad="SAME_UPPER", strides=[2, 2])],
                      [("x", ["N", 1, "H", "W"])], [("y", None)], [("w", w)])
    with pytest.raises(graphc.onnx.OnnxError, match=r"(?s)SAME with stride 2 on the "
                       r"symbolic spatial size H.*'stem'"):
        graphc.onnx.load(model)
