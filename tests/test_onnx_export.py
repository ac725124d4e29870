"""graphc.onnx.export: graphc functions as ONNX models, run by onnxruntime (an independent
implementation) and compared with graphc's compiled code and with numpy or torch; the models
pass ONNX's full checker; ONNX -> graphc.onnx.load -> export gives onnxruntime's results back.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the onnx package is not installed "
                                         "(pip install 'graphc[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")

from onnx import TensorProto, helper  # noqa: E402

import graphc  # noqa: E402
import graphc.onnx  # noqa: E402

BATCHES = (2, 5)


def session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run_onnx(model, *arrays) -> list:
    s = session(model)
    return s.run(None, {i.name: a for i, a in zip(s.get_inputs(), arrays)})


def as_list(result) -> list:
    if isinstance(result, dict):
        return list(result.values())
    if isinstance(result, (tuple, list)):
        return list(result)
    return [result]


def export_checked(fn, *specs, **options):
    model = graphc.onnx.export(fn, None, *specs, **options)
    onnx.checker.check_model(model, full_check=True)
    return model


def check_matches_compiled(fn, specs, make_inputs, numpy_fn=None, atol=1e-5, rtol=1e-5):
    """Exported model under onnxruntime == graphc's compiled function (== numpy_fn), at two
    batch sizes; returns the model."""
    model = export_checked(fn, *specs)
    compiled = graphc.compile(fn, *specs)
    rng = np.random.default_rng(0)
    for batch in BATCHES:
        args = make_inputs(rng, batch)
        got = run_onnx(model, *args)
        want = as_list(compiled(*args))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_allclose(g, w, atol=atol, rtol=rtol)
        if numpy_fn is not None:
            expected = as_list(numpy_fn(*args))
            assert len(expected) == len(got)
            for g, w in zip(got, expected):
                np.testing.assert_allclose(g, w, atol=atol, rtol=rtol)
    return model


def op_types(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


def np_erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype)


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------ graphc -> ONNX

def test_mlp_with_gelu_and_softmax_matches_compiled_and_numpy():
    def mlp(x, w1, b1, w2):
        return graphc.softmax(graphc.gelu(x @ w1 + b1) @ w2)

    def reference(x, w1, b1, w2):
        h = x @ w1 + b1
        return np_softmax(0.5 * h * (1 + np_erf(h / np.sqrt(2))) @ w2)

    specs = [graphc.tensor(("B", 4), name="x"), graphc.tensor((4, 8), name="w1"),
             graphc.tensor((8,), name="b1"), graphc.tensor((8, 3), name="w2")]
    model = check_matches_compiled(
        mlp, specs, lambda rng, b: [f32(rng, b, 4), f32(rng, 4, 8), f32(rng, 8), f32(rng, 8, 3)],
        reference)
    assert [i.name for i in model.graph.input] == ["x", "w1", "b1", "w2"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "B"
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "B"
    assert {"MatMul", "Erf", "ReduceMax", "ReduceSum", "Exp"} <= set(op_types(model))


def test_layer_norm_over_a_symbolic_batch_matches_numpy():
    def norm(x, gamma, beta):
        return graphc.layer_norm(x, (6,), gamma, beta)

    def reference(x, gamma, beta):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * gamma + beta

    specs = [graphc.tensor(("B", 3, 6)), graphc.tensor((6,)), graphc.tensor((6,))]
    check_matches_compiled(norm, specs,
                           lambda rng, b: [f32(rng, b, 3, 6), f32(rng, 6), f32(rng, 6)],
                           reference)


def test_conv2d_max_pool2d_relu_become_conv_and_maxpool_and_match_torch():
    torch = pytest.importorskip("torch")

    def net(x, w, b):
        return graphc.max_pool2d(graphc.relu(graphc.conv2d(x, w, b, padding=1)), 2)

    def reference(x, w, b):
        t = torch.nn.functional
        y = t.max_pool2d(t.relu(t.conv2d(*(torch.from_numpy(a) for a in (x, w, b)),
                                         padding=1)), 2)
        return y.numpy()

    specs = [graphc.tensor(("N", 3, 8, 8)), graphc.tensor((4, 3, 3, 3)), graphc.tensor((4,))]
    model = check_matches_compiled(
        net, specs, lambda rng, b: [f32(rng, b, 3, 8, 8), f32(rng, 4, 3, 3, 3), f32(rng, 4)],
        reference, atol=1e-4)
    assert {"Conv", "MaxPool"} <= set(op_types(model))
    assert "Slice" not in op_types(model)      # the pool's window pieces are not left over


def test_windows_without_a_pool_or_conv_node_gather_their_entries():
    torch = pytest.importorskip("torch")

    def net(x, w):   # a grouped, strided convolution and an average pool: windows + matmul
        y = graphc.conv2d(x, w, stride=2, padding=1, groups=2)
        return graphc.avg_pool2d(y, 2, padding=1, count_include_pad=False)

    def reference(x, w):
        t = torch.nn.functional
        y = t.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=2, padding=1, groups=2)
        return t.avg_pool2d(y, 2, padding=1, count_include_pad=False).numpy()

    specs = [graphc.tensor(("N", 4, 9, 9)), graphc.tensor((6, 2, 3, 3))]
    check_matches_compiled(net, specs,
                           lambda rng, b: [f32(rng, b, 4, 9, 9), f32(rng, 6, 2, 3, 3)],
                           reference, atol=1e-4)


@pytest.mark.parametrize("padding", [1, 3], ids=["padded", "cropped"])
def test_transposed_convolution_dilates_and_crops_like_torch(padding):
    torch = pytest.importorskip("torch")

    def up(x, w):   # windows over x dilated by the stride; padding 3 > 2 crops instead
        return graphc.conv_transpose2d(x, w, stride=2, padding=padding)

    def reference(x, w):
        return torch.nn.functional.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w),
                                                    stride=2, padding=padding).numpy()

    specs = [graphc.tensor(("N", 3, 5, 5)), graphc.tensor((3, 2, 3, 3))]
    check_matches_compiled(up, specs,
                           lambda rng, b: [f32(rng, b, 3, 5, 5), f32(rng, 3, 2, 3, 3)],
                           reference, atol=1e-4)


def test_reductions_with_axes_and_keepdims_match_numpy():
    def reductions(x):
        return {"total": graphc.sum(x, (0, 2)),
                "top": graphc.max(x, 1, keepdims=True),
                "low": graphc.min(x),
                "mean": graphc.mean(x, 0),            # divides by the symbolic batch size
                "var": graphc.var(x, -1)}

    def reference(x):
        return [x.sum((0, 2)), x.max(1, keepdims=True), x.min(), x.mean(0), x.var(-1)]

    model = check_matches_compiled(reductions, [graphc.tensor(("B", 3, 4))],
                                   lambda rng, b: [f32(rng, b, 3, 4)], reference)
    assert [o.name for o in model.graph.output] == ["total", "top", "low", "mean", "var"]
    assert "Shape" in op_types(model)


@pytest.mark.parametrize("opset", [13, 14, 17, 18, 21])
def test_each_opset_from_13_runs_in_onnxruntime(opset):
    def mixed(x):
        rows = graphc.reshape(x, (-1, 4))                     # (B * T, 4): sizes from Shape
        return graphc.max(rows, 1) + graphc.sum(rows, 1) + graphc.mean(x, (0, 1, 2))

    model = export_checked(mixed, graphc.tensor(("B", "T", 4)), opset=opset)
    assert model.opset_import[0].version == opset
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    rows = x.reshape(-1, 4)
    np.testing.assert_allclose(run_onnx(model, x)[0], rows.max(1) + rows.sum(1) + x.mean(),
                               rtol=1e-5, atol=1e-6)
    reduce_max = next(n for n in model.graph.node if n.op_type == "ReduceMax")
    assert ("axes" in [a.name for a in reduce_max.attribute]) == (opset < 18)


def test_where_comparisons_and_casts_match_numpy():
    def logic(x, y, n):
        big = graphc.where(x > y, x, y * 2.0)
        flags = graphc.logical_or(graphc.less_equal(x, 0.0), graphc.equal(y, 1.0))
        counts = graphc.astype(flags, "int32") + n
        picked = graphc.not_equal(counts, 1)
        mixed = graphc.where(picked, flags, graphc.greater(flags, picked))   # bools throughout
        return (big, flags, counts, graphc.astype(x, "int64"), graphc.astype(picked, "float32"),
                mixed)

    def reference(x, y, n):
        flags = (x <= 0) | (y == 1)
        counts = flags.astype(np.int32) + n
        picked = counts != 1
        return [np.where(x > y, x, y * 2), flags, counts, x.astype(np.int64),
                picked.astype(np.float32), np.where(picked, flags, flags > picked)]

    def inputs(rng, b):
        y = f32(rng, b, 5)
        y[0, :2] = 1.0
        return [f32(rng, b, 5) * 3, y, rng.integers(-2, 3, (5,)).astype(np.int32)]

    specs = [graphc.tensor(("B", 5)), graphc.tensor(("B", 5)), graphc.tensor((5,), "int32")]
    check_matches_compiled(logic, specs, inputs, reference)


def test_take_with_int64_indices_and_computed_indices_match_numpy():
    def lookup(table, ids, scores, cols):
        rows = graphc.take(table, ids, axis=0)                   # an embedding lookup
        best = graphc.take(table, graphc.argmax(scores, -1), 0)   # indices computed: clamped
        pick = graphc.take_along_axis(scores, cols, 1)            # (1, 3): broadcast over B
        return rows, best, pick

    def reference(table, ids, scores, cols):
        return [table[ids], table[scores.argmax(-1)], np.take_along_axis(scores, cols, 1)]

    def inputs(rng, b):
        return [f32(rng, 7, 3), rng.integers(-7, 7, (b, 2)).astype(np.int64), f32(rng, b, 4),
                rng.integers(-4, 4, (1, 3)).astype(np.int64)]

    specs = [graphc.tensor((7, 3)), graphc.tensor(("B", 2), "int64"), graphc.tensor(("B", 4)),
             graphc.tensor((1, 3), "int64")]
    model = check_matches_compiled(lookup, specs, inputs, reference)
    assert {"Gather", "GatherElements", "Min", "Max"} <= set(op_types(model))


def test_computed_indices_out_of_range_are_clamped_as_graphc_does():
    def shifted(x, ids):
        return graphc.take(x, ids + 10, axis=0)      # every index past the end: the last row

    model = export_checked(shifted, graphc.tensor((4, 2)), graphc.tensor((3,), "int64"))
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    ids = np.array([0, 1, -20], np.int64)
    want = x[np.clip(np.where(ids + 10 < 0, ids + 14, ids + 10), 0, 3)]
    np.testing.assert_array_equal(run_onnx(model, x, ids)[0], want)
    f = graphc.compile(shifted, graphc.tensor((4, 2)), graphc.tensor((3,), "int64"))
    np.testing.assert_array_equal(f(x, ids), want)


def _torch_attention(q, k, v, **kw):
    torch = pytest.importorskip("torch")
    t = {k_: torch.from_numpy(a) if isinstance(a, np.ndarray) else a for k_, a in kw.items()}
    out = torch.nn.functional.scaled_dot_product_attention(
        torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), **t)
    return out.numpy()


@pytest.mark.parametrize("variant", ["plain", "causal", "bool_mask"])
def test_scaled_dot_product_attention_block_matches_torch(variant):
    def block(x, wq, wk, wv, wo, keep):
        b = x.shape[0]
        heads = [graphc.transpose(graphc.reshape(x @ w, (b, 6, 2, 4)), (0, 2, 1, 3))
                 for w in (wq, wk, wv)]
        kw = {"is_causal": True} if variant == "causal" else \
            {"attn_mask": keep} if variant == "bool_mask" else {}
        out = graphc.scaled_dot_product_attention(*heads, **kw)
        out = graphc.reshape(graphc.transpose(out, (0, 2, 1, 3)), (b, 6, 8))
        return graphc.layer_norm(x + out @ wo, (8,))

    def reference(x, wq, wk, wv, wo, keep):
        b = x.shape[0]
        q, k, v = (np.ascontiguousarray((x @ w).reshape(b, 6, 2, 4).transpose(0, 2, 1, 3))
                   for w in (wq, wk, wv))
        kw = {"is_causal": True} if variant == "causal" else \
            {"attn_mask": keep} if variant == "bool_mask" else {}
        out = _torch_attention(q, k, v, **kw).transpose(0, 2, 1, 3).reshape(b, 6, 8)
        y = x + out @ wo
        mu = y.mean(-1, keepdims=True)
        return (y - mu) / np.sqrt(((y - mu) ** 2).mean(-1, keepdims=True) + 1e-5)

    def inputs(rng, b):
        keep = rng.random((6, 6)) < 0.6
        keep[:, 0] = True
        keep[3] = False                            # a fully masked query row: zeros
        return [f32(rng, b, 6, 8)] + [f32(rng, 8, 8) * 0.5 for _ in range(4)] + [keep]

    specs = [graphc.tensor(("B", 6, 8))] + [graphc.tensor((8, 8))] * 4 + \
        [graphc.tensor((6, 6), "bool")]
    model = check_matches_compiled(block, specs, inputs, reference, atol=1e-4)
    assert op_types(model).count("MatMul") >= 6
    if variant == "plain":
        assert "Softmax" in op_types(model)


def test_nn_transformer_encoder_layer_matches_torch_at_two_lengths():
    torch = pytest.importorskip("torch")
    from graphc import nn
    torch.manual_seed(0)
    theirs = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).eval()
    ours = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    model = export_checked(lambda x: ours(x), graphc.tensor(("B", "T", 8), name="x"))
    rng = np.random.default_rng(0)
    for batch, length in ((2, 5), (3, 7)):
        x = rng.standard_normal((batch, length, 8)).astype(np.float32)
        with torch.no_grad():
            want = theirs(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(run_onnx(model, x)[0], want, atol=1e-5)


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_nn_recurrent_layers_become_scan_and_match_torch(kind):
    torch = pytest.importorskip("torch")
    from graphc import nn
    torch.manual_seed(0)
    theirs = getattr(torch.nn, kind)(3, 5, num_layers=2, batch_first=True).eval()
    ours = getattr(nn, kind)(3, 5, num_layers=2, batch_first=True)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    model = export_checked(lambda x: ours(x)[0], graphc.tensor(("B", "T", 3), name="x"))
    assert op_types(model).count("Scan") == 2
    rng = np.random.default_rng(0)
    for batch, length in ((2, 4), (3, 6)):
        x = rng.standard_normal((batch, length, 3)).astype(np.float32)
        with torch.no_grad():
            want = theirs(torch.from_numpy(x))[0].numpy()
        np.testing.assert_allclose(run_onnx(model, x)[0], want, atol=1e-5)


def test_reverse_scan_with_a_captured_weight_matches_numpy():
    def backwards(xs, w):
        def step(c, x):
            c = graphc.tanh(c * 0.5 + x @ w)
            return c, c * 2.0
        return graphc.scan(step, graphc.zeros((2,)), xs, reverse=True)

    def reference(xs, w):
        c, ys = np.zeros(2, np.float32), np.zeros((len(xs), 2), np.float32)
        for t in reversed(range(len(xs))):
            c = np.tanh(c * 0.5 + xs[t] @ w)
            ys[t] = c * 2
        return [c, ys]

    check_matches_compiled(backwards, [graphc.tensor(("T", 3)), graphc.tensor((3, 2))],
                           lambda rng, t: [f32(rng, t, 3), f32(rng, 3, 2)], reference)


def test_embedding_gradient_is_a_scatter_add_that_accumulates_duplicates():
    def loss(table, ids, w):
        return graphc.sum(graphc.take(table, ids, 0) * w)

    def reference(table, ids, w):
        out = np.zeros_like(table)
        rows = np.where(ids < 0, ids + 7, ids).reshape(-1)
        np.add.at(out, rows, np.broadcast_to(w, (ids.size, 3)))
        return out

    def inputs(rng, b):   # 4 b indices into 7 rows: duplicates
        return [f32(rng, 7, 3), rng.integers(-7, 7, (b, 4)).astype(np.int64), f32(rng, 3)]

    specs = [graphc.tensor((7, 3)), graphc.tensor(("B", 4), "int64"), graphc.tensor((3,))]
    model = check_matches_compiled(graphc.grad(loss), specs, inputs, reference)
    assert "ScatterElements" in op_types(model)


def _pools(x):
    return graphc.sum(graphc.max_pool2d(x, 3, 2, padding=1) * graphc.avg_pool2d(x, 2, padding=1))


def _strided_conv(x, w):
    return graphc.sum(graphc.tanh(graphc.conv2d(x, w, stride=2, padding=1)))


def _grouped_conv(x, w):
    return graphc.sum(graphc.tanh(graphc.conv2d(x, w, stride=2, padding=1, groups=2)))


def _cross_entropy(x, y):
    return -graphc.sum(graphc.take_along_axis(graphc.log_softmax(x), y, 1))


def _pads(x):
    y = graphc.tanh(graphc.pad(x, ((0, 0), (1, 2), (2, 1)), mode="reflect"))
    return graphc.sum(y) + graphc.sum(graphc.pad(x, ((0, 0), (2, 1), (3, 0)), mode="edge") * y)


GRADIENTS = {
    "max_and_avg_pool": (_pools, 0, [("B", 2, 7, 7)], ()),
    "strided_conv": (_strided_conv, (0, 1), [("B", 2, 7, 7), (3, 2, 3, 3)], ()),
    "grouped_conv": (_grouped_conv, (0, 1), [("B", 4, 7, 7), (4, 2, 3, 3)], ()),
    "cross_entropy": (_cross_entropy, 0, [("B", 5)], [("B", 1)]),
    "reflect_and_edge_pad": (_pads, 0, [(3, 4, 5)], ()),
}


@pytest.mark.parametrize("case", sorted(GRADIENTS))
def test_gradients_match_compiled(case):
    fn, argnums, float_shapes, index_shapes = GRADIENTS[case]
    specs = [graphc.tensor(s) for s in float_shapes] + \
        [graphc.tensor(s, "int64") for s in index_shapes]

    def inputs(rng, b):
        def size(s):
            return [b if d == "B" else d for d in s]
        return [f32(rng, *size(s)) for s in float_shapes] + \
            [rng.integers(0, 5, size(s)).astype(np.int64) for s in index_shapes]

    check_matches_compiled(graphc.grad(fn, argnums), specs, inputs, atol=1e-4)


def test_softmax_attention_from_matmuls_matches_numpy():
    def attend(q, k, v):
        scores = q @ graphc.transpose(k, (0, 2, 1)) * (1 / math.sqrt(4))
        return graphc.softmax(scores) @ v

    def reference(q, k, v):
        return np_softmax(q @ k.transpose(0, 2, 1) / 2) @ v

    specs = [graphc.tensor(("B", 5, 4)), graphc.tensor(("B", 7, 4)), graphc.tensor(("B", 7, 3))]
    check_matches_compiled(attend, specs,
                           lambda rng, b: [f32(rng, b, 5, 4), f32(rng, b, 7, 4),
                                           f32(rng, b, 7, 3)], reference)


def test_symbolic_sizes_reshape_iota_and_broadcast_at_run_time():
    def flat(x, w):
        b, t = x.shape[0], x.shape[1]
        rows = graphc.reshape(x, (-1, 4)) @ w                     # (B*T, 3)
        back = graphc.reshape(rows, (b, t, 3))
        counts = graphc.broadcast_to(graphc.reshape(graphc.sum(x, (1, 2)), (b, 1, 1)),
                                     (b, t, 3))
        causal = graphc.tril(graphc.broadcast_to(graphc.constant(np.float32(1)), (t, t)))
        return back + counts, causal

    def reference(x, w):
        b, t = x.shape[:2]
        return [(x.reshape(-1, 4) @ w).reshape(b, t, 3) + x.sum((1, 2))[:, None, None],
                np.tril(np.ones((t, t), np.float32))]

    def inputs(rng, b):
        return [f32(rng, b, b + 1, 4), f32(rng, 4, 3)]

    model = check_matches_compiled(flat, [graphc.tensor(("B", "T", 4)), graphc.tensor((4, 3))],
                                   inputs, reference)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["B", "T", 4]


def test_export_of_a_compiled_function_and_of_a_graph():
    def f(x):
        return graphc.tanh(x) * 2.0 + graphc.constant(np.arange(12, dtype=np.float32))

    spec = graphc.tensor(("B", 12))
    x = np.random.default_rng(0).standard_normal((3, 12)).astype(np.float32)
    want = np.tanh(x) * 2 + np.arange(12, dtype=np.float32)
    for source in (graphc.compile(f, spec), graphc.trace(f, spec)):
        model = graphc.onnx.export(source)
        onnx.checker.check_model(model, full_check=True)
        np.testing.assert_allclose(run_onnx(model, x)[0], want, rtol=1e-6)


def test_export_writes_the_model_to_path(tmp_path):
    path = tmp_path / "relu.onnx"
    graphc.onnx.export(lambda x: graphc.relu(x), path, graphc.tensor(("B", 3)))
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    x = np.array([[-1, 0, 2]], np.float32)
    np.testing.assert_array_equal(run_onnx(model, x)[0], np.maximum(x, 0))
    assert model.opset_import[0].version == graphc.onnx.exporter.DEFAULT_OPSET


def test_every_graphc_op_has_an_export_rule_or_a_reason():
    from graphc.ops.registry import OPS
    from graphc.onnx.exporter import EXPORTERS, NOT_EXPORTED
    assert sorted(OPS) == sorted(set(EXPORTERS) | set(NOT_EXPORTED))


def test_ops_without_a_rule_are_all_named_in_one_error(monkeypatch):
    from graphc.onnx.exporter import EXPORTERS
    monkeypatch.delitem(EXPORTERS, "tanh")
    monkeypatch.delitem(EXPORTERS, "erf")

    def activations(x):
        return graphc.tanh(x) + graphc.tanh(x * 2.0) + graphc.erf(x)

    with pytest.raises(graphc.onnx.OnnxError) as info:
        graphc.onnx.export(activations, None, graphc.tensor((3,)))
    text = str(info.value)
    assert "2 graphc op(s)" in text and "tanh (2 nodes" in text and "erf (1 node" in text
    assert "test_onnx_export.py" in text


def test_random_uniform_is_bit_identical_to_graphc():
    def noisy(x, key):
        return x * graphc.random_uniform(key, (x.shape[0], 3)), graphc.random_uniform(key, (5,))

    specs = [graphc.tensor(("B", 3)), graphc.tensor((), "int64")]
    model = export_checked(noisy, *specs)
    compiled = graphc.compile(noisy, *specs)
    for batch, key in ((2, 0), (5, -5), (3, 2 ** 62 + 3)):
        args = [np.ones((batch, 3), np.float32), np.array(key, np.int64)]
        for got, want in zip(run_onnx(model, *args), compiled(*args)):
            np.testing.assert_array_equal(got, want)


def test_a_scan_over_a_length_alone_is_refused_by_name():
    def count(x):
        total, _ = graphc.scan(lambda c, _: (c + 1.0, None), x, length=3)
        return total

    with pytest.raises(graphc.onnx.OnnxError, match="scan .* without xs"):
        graphc.onnx.export(count, None, graphc.tensor((2,)))


def test_gradients_need_opset_16_for_scatter_add():
    def loss(table, ids):
        return graphc.sum(graphc.take(table, ids, 0))

    with pytest.raises(graphc.onnx.OnnxError, match="opset 16"):
        graphc.onnx.export(graphc.grad(loss), None, graphc.tensor((4, 3)),
                           graphc.tensor((5,), "int64"), opset=15)


def test_an_unsupported_opset_is_refused():
    with pytest.raises(graphc.onnx.OnnxError, match="opset 7"):
        graphc.onnx.export(lambda x: x + 1.0, None, graphc.tensor((2,)), opset=7)


# ------------------------------------------------------------------ ONNX -> graphc -> ONNX

def _model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "hand_built", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _init(name, rng, *shape):
    return onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def _mlp_model(rng):
    return _model(
        [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, alpha=0.5),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3])],
        [_init("w1", rng, 6, 4), _init("b1", rng, 6), _init("w2", rng, 6, 3)])


def _reshape_model(rng):
    shape = onnx.numpy_helper.from_array(np.array([0, 2, 3], np.int64), "shape")
    return _model(
        [helper.make_node("Reshape", ["x", "shape"], ["y"]),
         helper.make_node("Transpose", ["y"], ["t"], perm=[0, 2, 1]),
         helper.make_node("MatMul", ["t", "w"], ["m"]),
         helper.make_node("Add", ["m", "bias"], ["a"]),
         helper.make_node("Relu", ["a"], ["out"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6]),
         helper.make_tensor_value_info("bias", TensorProto.FLOAT, [5])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 3, 5]),
         helper.make_tensor_value_info("t", TensorProto.FLOAT, ["n", 3, 2])],
        [shape, _init("w", rng, 2, 5)])


@pytest.mark.parametrize("build", [_mlp_model, _reshape_model], ids=["gemm_mlp", "reshape"])
def test_onnx_load_then_export_runs_like_the_original_under_onnxruntime(build):
    rng = np.random.default_rng(0)
    original = build(rng)
    again = graphc.onnx.export(graphc.onnx.load(original))
    onnx.checker.check_model(again, full_check=True)
    assert [i.name for i in again.graph.input] == [i.name for i in original.graph.input]
    assert [o.name for o in again.graph.output] == [o.name for o in original.graph.output]
    assert again.graph.input[0].type == original.graph.input[0].type     # dim_param included
    for batch in BATCHES:
        inputs = [rng.standard_normal([d.dim_value or batch
                                       for d in vi.type.tensor_type.shape.dim]).astype(np.float32)
                  for vi in original.graph.input]
        for got, want in zip(run_onnx(again, *inputs), run_onnx(original, *inputs)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
