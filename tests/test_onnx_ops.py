"""graphc.onnx op handlers on the paths ONNX's node tests miss (known values folded at import,
symbolic sizes, dtype rules), each against onnxruntime on the same model."""
from __future__ import annotations

import io

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the onnx package is not installed")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import graphc  # noqa: E402
import graphc.onnx  # noqa: E402
from graphc.ir.types import Dim  # noqa: E402


# math ops

def _model(nodes, inputs, outputs, opset=17, initializers=()):
    """A one-graph ONNX model; inputs/outputs as (name, elem type, shape) with str dims
    symbolic."""
    graph = helper.make_graph(
        nodes, "math_ops",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), n) for n, v in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _const(name, value):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(
        np.asarray(value), name))


def _onnxruntime(model, *arrays):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, dict(zip(names, arrays)))


def _assert_like_onnxruntime(model, compiled, *arrays, rtol=1e-6, atol=1e-6):
    want = _onnxruntime(model, *arrays)
    got = compiled(*arrays)
    for out, w in zip(model.graph.output, want):
        g = got[out.name]
        assert g.dtype == w.dtype, f"{out.name}: dtype {g.dtype}, onnxruntime {w.dtype}"
        assert g.shape == w.shape, f"{out.name}: shape {g.shape}, onnxruntime {w.shape}"
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=out.name)


def test_shape_arithmetic_folds_into_a_static_reshape_over_a_symbolic_batch(rng):
    # the pattern exporters emit: target = (B, H*W / 2, 2) computed from Shape(x) with
    # Gather/Mul/Div/Neg/Cast/Max/Where; the Reshape needs it at import, so it must fold
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        _const("i0", np.array([0], np.int64)), _const("i1", np.array([1], np.int64)),
        _const("i2", np.array([2], np.int64)), _const("two", np.array([2], np.int64)),
        _const("minus_one", np.array([-1], np.int64)),
        helper.make_node("Gather", ["shape", "i0"], ["b"], axis=0),
        helper.make_node("Gather", ["shape", "i1"], ["h"], axis=0),
        helper.make_node("Gather", ["shape", "i2"], ["w"], axis=0),
        helper.make_node("Mul", ["h", "w"], ["hw"]),
        helper.make_node("Div", ["hw", "two"], ["half"]),
        helper.make_node("Neg", ["half"], ["neg_half"]),
        helper.make_node("Neg", ["neg_half"], ["half_again"]),
        helper.make_node("Cast", ["half_again"], ["half_int"], to=TensorProto.INT64),
        helper.make_node("Max", ["b", "minus_one"], ["b_max"]),        # B >= 0 > -1
        helper.make_node("Equal", ["b_max", "minus_one"], ["is_minus_one"]),   # never
        helper.make_node("Where", ["is_minus_one", "two", "b_max"], ["b_where"]),
        helper.make_node("Concat", ["b_where", "half_int", "two"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    model = _model(nodes, [("x", TensorProto.FLOAT, ["batch", 3, 4])],
                   [("y", TensorProto.FLOAT, ["batch", 6, 2])])
    compiled = graphc.onnx.compile(model)
    assert compiled.graph.nodes[compiled.graph.outputs[0]].shape[1:] == (6, 2)
    for batch in (1, 5):
        _assert_like_onnxruntime(model, compiled, rng.standard_normal((batch, 3, 4),
                                                                      np.float32))


def test_a_size_used_as_data_becomes_a_run_time_value(rng):
    # B + 1 is no size graphc can express; as data (scaling x) it is computed at run time
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], start=0, end=1),
        _const("one", np.array([1], np.int64)),
        helper.make_node("Add", ["shape", "one"], ["b1"]),
        helper.make_node("Cast", ["b1"], ["scale"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "scale"], ["y"]),
        helper.make_node("GreaterOrEqual", ["shape", "one"], ["nonempty"]),
    ]
    model = _model(nodes, [("x", TensorProto.FLOAT, ["batch", 3])],
                   [("y", TensorProto.FLOAT, ["batch", 3]), ("nonempty", TensorProto.BOOL, [1])])
    compiled = graphc.onnx.compile(model)
    for batch in (2, 7):
        _assert_like_onnxruntime(model, compiled, rng.standard_normal((batch, 3), np.float32))


def test_sizes_divided_at_import_truncate_like_onnx(rng):
    # [B, -7] / [1, 2] stays sizes at import ([B, -3]) and is returned as an int64 tensor
    nodes = [
        helper.make_node("Shape", ["x"], ["b"], start=0, end=1),
        _const("minus_seven", np.array([-7], np.int64)),
        _const("divisor", np.array([1, 2], np.int64)),
        helper.make_node("Concat", ["b", "minus_seven"], ["sizes"], axis=0),
        helper.make_node("Div", ["sizes", "divisor"], ["y"]),
    ]
    model = _model(nodes, [("x", TensorProto.FLOAT, ["batch", 2])], [("y", TensorProto.INT64, [2])])
    compiled = graphc.onnx.compile(model)
    for batch in (3, 4):
        _assert_like_onnxruntime(model, compiled, rng.standard_normal((batch, 2), np.float32),
                                 rtol=0, atol=0)


def test_known_integer_division_truncates_toward_zero():
    # folded at import (both inputs constants) with ONNX's C semantics, int64 exactly
    a = np.array([-7, 7, -7, 7, 2 ** 62 + 1, -(2 ** 62) - 3], np.int64)
    b = np.array([2, -2, -2, 2, 3, 7], np.int64)
    nodes = [_const("a", a), _const("b", b), helper.make_node("Div", ["a", "b"], ["q"])]
    model = _model(nodes, [], [("q", TensorProto.INT64, [6])])
    compiled = graphc.onnx.compile(model)
    _assert_like_onnxruntime(model, compiled, rtol=0, atol=0)


@pytest.mark.parametrize("elem,dtype", [(TensorProto.INT32, np.int32),
                                        (TensorProto.INT64, np.int64)])
def test_integer_division_at_run_time_truncates_and_stays_exact(elem, dtype, rng):
    info = np.iinfo(dtype)
    a = np.concatenate([rng.integers(-50, 50, 40), [info.max, info.min + 1, -info.max]])
    b = np.concatenate([rng.choice([-7, -3, -1, 1, 2, 5], 40), [3, 7, -9]])
    model = _model([helper.make_node("Div", ["a", "b"], ["q"])],
                   [("a", elem, ["n"]), ("b", elem, ["n"])], [("q", elem, ["n"])])
    compiled = graphc.onnx.compile(model)
    _assert_like_onnxruntime(model, compiled, a.astype(dtype), b.astype(dtype), rtol=0, atol=0)


def test_integer_pow_is_exact_where_float_pow_rounds():
    # 3^33 = 5559060566555523 < 2^53: a float64 pow an ulp off would truncate wrongly
    a = np.array([3, -3, 2, 7, 10, -2, 0, 1], np.int64)
    b = np.array([33, 21, 52, 18, 15, 61, 5, 40], np.int64)
    model = _model([helper.make_node("Pow", ["a", "b"], ["y"])],
                   [("a", TensorProto.INT64, [8]), ("b", TensorProto.INT64, [8])],
                   [("y", TensorProto.INT64, [8])])
    compiled = graphc.onnx.compile(model)
    _assert_like_onnxruntime(model, compiled, a, b, rtol=0, atol=0)


def test_pow_of_a_float_by_a_known_scalar_exponent(rng):
    x = rng.uniform(0.1, 3.0, (4, 5)).astype(np.float32)
    for exponent in (2.0, 0.5, -1.0, 1.7):
        model = _model([helper.make_node("Pow", ["x", "e"], ["y"])],
                       [("x", TensorProto.FLOAT, ["n", 5])], [("y", TensorProto.FLOAT, ["n", 5])],
                       initializers=[("e", np.array(exponent, np.float32))])
        _assert_like_onnxruntime(model, graphc.onnx.compile(model), x, rtol=2e-6)


@pytest.mark.parametrize("opset", [11, 13])
def test_softmax_axis_before_and_after_opset_13(opset, rng):
    # before 13 the input is flattened to 2-D at `axis`; from 13 softmax runs along `axis`
    model = _model([helper.make_node("Softmax", ["x"], ["y"], axis=1),
                    helper.make_node("LogSoftmax", ["x"], ["z"], axis=1)],
                   [("x", TensorProto.FLOAT, ["batch", 3, 4])],
                   [("y", TensorProto.FLOAT, ["batch", 3, 4]),
                    ("z", TensorProto.FLOAT, ["batch", 3, 4])], opset=opset)
    compiled = graphc.onnx.compile(model)
    for batch in (2, 3):
        _assert_like_onnxruntime(model, compiled, rng.standard_normal((batch, 3, 4),
                                                                      np.float32), rtol=1e-5)


OUT_SHAPES = {"ReduceMean": ["batch", 1, 4], "ReduceMax": [3], "ReduceSumSquare": ["batch", 3, 1],
              "ReduceL2": ["batch", 1, 4], "ReduceSum": [1, 3]}


@pytest.mark.parametrize("opset", [13, 18])
def test_reductions_over_a_symbolic_batch_keep_the_dtype(opset, rng):
    # axes are an attribute before opset 18 (ReduceSum: 13), an input from then on
    ops = [("ReduceMean", TensorProto.FLOAT, [1]), ("ReduceMax", TensorProto.FLOAT, [0, 2]),
           ("ReduceSumSquare", TensorProto.FLOAT, [-1]), ("ReduceL2", TensorProto.FLOAT, [1]),
           ("ReduceSum", TensorProto.INT32, [0])]
    nodes, outputs, inits = [], [], []
    for op, elem, axes in ops:
        src = "x" if elem == TensorProto.FLOAT else "i"
        axes_input = op == "ReduceSum" or opset >= 18
        inputs = [src, f"{op}_axes"] if axes_input else [src]
        attrs = {} if axes_input else {"axes": axes}
        if axes_input:
            inits.append((f"{op}_axes", np.array(axes, np.int64)))
        nodes.append(helper.make_node(op, inputs, [op], keepdims=int(op != "ReduceMax"),
                                      **attrs))
        outputs.append((op, elem, OUT_SHAPES[op]))
    model = _model(nodes, [("x", TensorProto.FLOAT, ["batch", 3, 4]),
                           ("i", TensorProto.INT32, ["batch", 3])], outputs, opset=opset,
                   initializers=inits)
    compiled = graphc.onnx.compile(model)
    for batch in (1, 6):
        _assert_like_onnxruntime(model, compiled,
                                 rng.standard_normal((batch, 3, 4), np.float32),
                                 rng.integers(-2 ** 20, 2 ** 20, (batch, 3)).astype(np.int32),
                                 rtol=1e-5)


def test_argmax_argmin_pick_the_last_tie_when_asked(rng):
    x = rng.integers(0, 3, (6, 5)).astype(np.float32)     # many ties
    nodes = [helper.make_node("ArgMax", ["x"], ["last_max"], axis=1, select_last_index=1),
             helper.make_node("ArgMin", ["x"], ["last_min"], axis=0, keepdims=0,
                              select_last_index=1),
             helper.make_node("ArgMax", ["x"], ["first_max"], axis=-1, keepdims=0)]
    model = _model(nodes, [("x", TensorProto.FLOAT, ["n", 5])],
                   [("last_max", TensorProto.INT64, ["n", 1]),
                    ("last_min", TensorProto.INT64, [5]), ("first_max", TensorProto.INT64, ["n"])])
    _assert_like_onnxruntime(model, graphc.onnx.compile(model), x, rtol=0, atol=0)


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
def test_cumsum_of_int32_keeps_int32(exclusive, reverse, rng):
    x = rng.integers(-100, 100, (3, 7)).astype(np.int32)
    model = _model([helper.make_node("CumSum", ["x", "axis"], ["y"], exclusive=exclusive,
                                     reverse=reverse)],
                   [("x", TensorProto.INT32, ["n", 7])], [("y", TensorProto.INT32, ["n", 7])],
                   initializers=[("axis", np.array(-1, np.int64))])
    _assert_like_onnxruntime(model, graphc.onnx.compile(model), x, rtol=0, atol=0)


def test_dropout_in_training_mode_keeps_about_one_minus_ratio_scaled():
    # the mask comes from graphc's own generator (not onnxruntime's): check its law instead
    model = _model([helper.make_node("Dropout", ["x", "ratio", "training"], ["y", "mask"],
                                     seed=3)],
                   [("x", TensorProto.FLOAT, [200, 50])],
                   [("y", TensorProto.FLOAT, [200, 50]), ("mask", TensorProto.BOOL, [200, 50])],
                   initializers=[("ratio", np.array(0.25, np.float32)),
                                 ("training", np.array(True))], opset=13)
    compiled = graphc.onnx.compile(model)
    x = np.full((200, 50), 3.0, np.float32)
    out = compiled(x)
    y, mask = out["y"], out["mask"]
    assert mask.dtype == np.bool_ and abs(mask.mean() - 0.75) < 0.02
    np.testing.assert_allclose(y, np.where(mask, 4.0, 0.0), rtol=1e-6)
    np.testing.assert_array_equal(compiled(x)["mask"], mask)     # the seed fixes the mask


def test_eval_mode_dropout_and_identity_pass_values_through(rng):
    model = _model([helper.make_node("Dropout", ["x"], ["d"]),
                    helper.make_node("Identity", ["d"], ["y"])],
                   [("x", TensorProto.FLOAT, ["n", 4])], [("y", TensorProto.FLOAT, ["n", 4])])
    _assert_like_onnxruntime(model, graphc.onnx.compile(model),
                             rng.standard_normal((3, 4), np.float32), rtol=0, atol=0)


def test_cumsum_along_a_symbolic_axis_is_a_clear_error():
    model = _model([helper.make_node("CumSum", ["x", "axis"], ["y"], name="running")],
                   [("x", TensorProto.FLOAT, ["batch", 3])],
                   [("y", TensorProto.FLOAT, ["batch", 3])],
                   initializers=[("axis", np.array(0, np.int64))])
    with pytest.raises(graphc.onnx.OnnxError, match=r"CumSum: the axis 0 has the symbolic size "
                                                    r"batch(.|\n)*ONNX node 'running'"):
        graphc.onnx.load(model)


def test_cast_to_an_unsupported_type_names_it():
    model = _model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT16)],
                   [("x", TensorProto.FLOAT, [3])], [("y", TensorProto.FLOAT16, [3])])
    with pytest.raises(graphc.onnx.OnnxError, match="Cast: casting to FLOAT16 is not supported"):
        graphc.onnx.load(model)


@pytest.mark.parametrize("fmod", [0, 1])
@pytest.mark.parametrize("elem,dtype", [(TensorProto.INT32, np.int32),
                                        (TensorProto.INT64, np.int64)])
def test_integer_mod_follows_the_divisor_or_the_dividend(fmod, elem, dtype, rng):
    a = rng.integers(-40, 40, 60).astype(dtype)
    b = rng.choice([-9, -4, -1, 1, 3, 7], 60).astype(dtype)
    model = _model([helper.make_node("Mod", ["a", "b"], ["r"], fmod=fmod)],
                   [("a", elem, ["n"]), ("b", elem, ["n"])], [("r", elem, ["n"])])
    _assert_like_onnxruntime(model, graphc.onnx.compile(model), a, b, rtol=0, atol=0)


@pytest.mark.parametrize("fmod", [0, 1])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_float_mod_matches_numpy_with_signed_zeros_and_infinities(fmod, dtype, rng):
    # ONNX's reference is numpy's mod (fmod=0) and fmod (fmod=1); onnxruntime has no fmod=0
    # for floats
    special_a = [0.0, -0.0, 0.0, -0.0, -3.0, 3.0, -1.0, 1.0, np.inf, -np.inf, 1.0, np.nan, -6.0]
    special_b = [-2.0, 2.0, 2.0, -2.0, np.inf, np.inf, -np.inf, -np.inf, 2.0, 2.0, 0.0, 2.0, 3.0]
    a = np.concatenate([special_a, rng.uniform(-50, 50, 200)]).astype(dtype)
    b = np.concatenate([special_b, rng.uniform(-8, 8, 200)]).astype(dtype)
    elem = TensorProto.FLOAT if dtype == "float32" else TensorProto.DOUBLE
    model = _model([helper.make_node("Mod", ["a", "b"], ["r"], fmod=fmod)],
                   [("a", elem, ["n"]), ("b", elem, ["n"])], [("r", elem, ["n"])])
    got = graphc.onnx.compile(model)(a, b)["r"]
    with np.errstate(all="ignore"):
        want = (np.fmod if fmod else np.mod)(a, b)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(np.signbit(got[:13]), np.signbit(want[:13]))
    np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == "float32" else 1e-12,
                               atol=1e-5 if dtype == "float32" else 1e-12)


def test_a_torch_export_with_a_dynamic_batch_matches_onnxruntime(rng):
    # torch's exporter writes floor division as Div/Mod/Where and sizes as Shape arithmetic
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    import io

    class Model(torch.nn.Module):
        def forward(self, x, i):
            y = torch.softmax(x, -1) * (x.shape[0] + 1) / x.shape[1]
            z = torch.nn.functional.gelu(x).clamp(-1, 2) ** 2
            s = x.sum(dim=1, keepdim=True) - x.amax(dim=0)
            e = torch.where(x > 0, x, torch.exp(x) - 1).mean(0)
            return y, z, s, e, x.argmax(-1), torch.cumsum(i, dim=1), i // 3, i % 4

    batch = torch.export.Dim("batch")
    buffer = io.BytesIO()
    torch.onnx.export(Model(), (torch.randn(4, 6), torch.randint(-9, 9, (4, 5))), buffer,
                      input_names=["x", "i"], dynamo=True, verbose=False,
                      dynamic_shapes=({0: batch}, {0: batch}))
    model = onnx.load_from_string(buffer.getvalue())
    compiled = graphc.onnx.compile(model)
    for n in (2, 7):
        _assert_like_onnxruntime(model, compiled, rng.standard_normal((n, 6), np.float32),
                                 rng.integers(-20, 20, (n, 5)), rtol=1e-5)


def _unary_model(op, elem=TensorProto.FLOAT, opset=17, **attrs):
    return _model([helper.make_node(op, ["x"], ["y"], **attrs)], [("x", elem, ["n"])],
                  [("y", elem, ["n"])], opset=opset)


@pytest.mark.parametrize("op", ["Floor", "Ceil", "Round"])
@pytest.mark.parametrize("elem,dtype", [(TensorProto.FLOAT, np.float32),
                                        (TensorProto.DOUBLE, np.float64)])
def test_rounding_ops_on_halves_negatives_and_huge_values(op, elem, dtype, rng):
    # Round ties to even; beyond 2^52 every float is an integer and stays itself
    x = np.concatenate([[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, -0.0, 2.0 ** 60, -3e38, np.inf,
                         -np.inf, 0.49999997, 1e-30, -1e-30],
                        rng.uniform(-100, 100, 100)]).astype(dtype)
    model = _unary_model(op, elem)
    _assert_like_onnxruntime(model, graphc.onnx.compile(model), x, rtol=0, atol=0)


_SELU_ALPHA, _SELU_GAMMA = 1.67326319217681884765625, 1.05070102214813232421875
# numpy in float64, as ONNX's reference computes them (expm1, not exp - 1): onnxruntime's
# float32 exp(x) - 1 loses the small inputs this test is about
ACTIVATIONS = {
    "Elu": ({}, lambda x: np.where(x > 0, x, np.expm1(x))),
    "Elu_alpha": ({"alpha": 0.3}, lambda x: np.where(x > 0, x, 0.3 * np.expm1(x))),
    "Selu": ({}, lambda x: _SELU_GAMMA * np.where(x > 0, x, _SELU_ALPHA * np.expm1(x))),
    "Celu": ({"alpha": 2.0}, lambda x: np.maximum(x, 0) + np.minimum(0, 2 * np.expm1(x / 2))),
    "Sinh": ({}, np.sinh), "Cosh": ({}, np.cosh), "Tan": ({}, np.tan),
    "Mish": ({}, lambda x: x * np.tanh(np.log1p(np.exp(x)))),
    "Softsign": ({}, lambda x: x / (1 + np.abs(x))),
    "HardSwish": ({}, lambda x: x * np.clip(x / 6 + 0.5, 0, 1)),
    "Swish": ({"alpha": 1.5}, lambda x: x / (1 + np.exp(-1.5 * x))),
    "Sign": ({}, np.sign),
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activations_keep_small_inputs_accurate(name, rng):
    # tiny |x| is where exp(x) - 1 and (e^x - e^-x) / 2 cancel
    attrs, reference = ACTIVATIONS[name]
    x = np.concatenate([[0.0, 1e-7, -1e-7, 3e-4, -3e-4, 0.01, -0.01, 20.0, -20.0],
                        rng.uniform(-4, 4, 200)]).astype(np.float32)
    model = _unary_model(name.split("_")[0], opset=24, **attrs)     # Swish: opset 24
    got = graphc.onnx.compile(model)(x)["y"]
    assert got.dtype == np.float32
    # HardSwish's x / 6 + 1/2 cancels near -3 in float32 (as ONNX's definition does)
    rtol = 1e-5 if name == "HardSwish" else 2e-6
    np.testing.assert_allclose(got, reference(x.astype(np.float64)), rtol=rtol, atol=1e-30)


@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_prod_wraps_integers_and_reduces_odd_sizes(keepdims, rng):
    x = rng.integers(-9, 10, (3, 7, 5)).astype(np.int64)     # 7 * 5 = 35 factors per row
    model = _model([helper.make_node("ReduceProd", ["x", "axes"], ["y"], keepdims=keepdims)],
                   [("x", TensorProto.INT64, ["n", 7, 5])],
                   [("y", TensorProto.INT64, ["n", 1, 1] if keepdims else ["n"])], opset=18,
                   initializers=[("axes", np.array([2, 1], np.int64))])
    _assert_like_onnxruntime(model, graphc.onnx.compile(model), x, rtol=0, atol=0)


def test_reduce_log_sum_exp_of_large_and_infinite_rows():
    x = np.array([[1000.0, 1000.0, 999.0], [-np.inf, -np.inf, -np.inf], [-np.inf, 0.0, 1.0],
                  [-1000.0, -1001.0, -1002.0]], np.float32)
    model = _model([helper.make_node("ReduceLogSumExp", ["x"], ["y"], axes=[1], keepdims=0)],
                   [("x", TensorProto.FLOAT, ["n", 3])], [("y", TensorProto.FLOAT, ["n"])],
                   opset=13)
    _assert_like_onnxruntime(model, graphc.onnx.compile(model), x, rtol=1e-6)


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
def test_cumprod_of_int64(exclusive, reverse, rng):
    x = rng.integers(-3, 4, (2, 9)).astype(np.int64)
    model = _model([helper.make_node("CumProd", ["x", "axis"], ["y"], exclusive=exclusive,
                                     reverse=reverse)],
                   [("x", TensorProto.INT64, ["n", 9])], [("y", TensorProto.INT64, ["n", 9])],
                   opset=26, initializers=[("axis", np.array(1, np.int64))])
    got = graphc.onnx.compile(model)(x)["y"]
    # onnxruntime may lack CumProd (opset 26): ONNX's reference is numpy's cumprod
    y = np.flip(x, 1) if reverse else x
    if exclusive:
        y = np.concatenate([np.ones((2, 1), np.int64), y[:, :-1]], 1)
    want = np.cumprod(y, 1)
    np.testing.assert_array_equal(got, np.flip(want, 1) if reverse else want)


@pytest.mark.parametrize("opset", [11, 13])
def test_hardmax_marks_the_first_maximum(opset, rng):
    x = rng.integers(0, 3, (2, 3, 4)).astype(np.float32)    # ties
    model = _model([helper.make_node("Hardmax", ["x"], ["y"], axis=1)],
                   [("x", TensorProto.FLOAT, ["n", 3, 4])], [("y", TensorProto.FLOAT, ["n", 3, 4])],
                   opset=opset)
    _assert_like_onnxruntime(model, graphc.onnx.compile(model), x, rtol=0, atol=0)


def test_is_inf_is_nan_and_xor(rng):
    x = np.array([np.inf, -np.inf, np.nan, 0.0, 1.0, -3.0], np.float32)
    nodes = [helper.make_node("IsInf", ["x"], ["pos"], detect_negative=0),
             helper.make_node("IsInf", ["x"], ["inf"]),
             helper.make_node("IsNaN", ["x"], ["nan"]),
             helper.make_node("Xor", ["inf", "nan"], ["odd"])]
    model = _model(nodes, [("x", TensorProto.FLOAT, ["n"])],
                   [(n, TensorProto.BOOL, ["n"]) for n in ("pos", "inf", "nan", "odd")])
    _assert_like_onnxruntime(model, graphc.onnx.compile(model), x, rtol=0, atol=0)


INVERSE_TRIG = {"Atan": (np.arctan, -1e30, 1e30), "Asin": (np.arcsin, -1, 1),
                "Acos": (np.arccos, -1, 1), "Asinh": (np.arcsinh, -1e30, 1e30),
                "Acosh": (np.arccosh, 1, 1e30), "Atanh": (np.arctanh, -1, 1)}


@pytest.mark.parametrize("elem,dtype", [(TensorProto.FLOAT, np.float32),
                                        (TensorProto.DOUBLE, np.float64)])
@pytest.mark.parametrize("op", sorted(INVERSE_TRIG))
def test_inverse_trig_within_5_ulp_over_the_whole_domain(op, elem, dtype):
    reference, lo, hi = INVERSE_TRIG[op]
    if hi > 1e3:      # magnitudes from 1e-30 to 1e30 (of both signs where the domain has them)
        x = np.geomspace(max(lo, 1e-30), hi, 3000)
        x = np.concatenate([-x, x]) if lo < 0 else x
    else:
        x = np.concatenate([np.linspace(lo, hi, 4001), np.geomspace(1e-30, 1, 500) * hi])
    x = np.concatenate([x, [lo, hi, np.nan]]).astype(dtype)
    model = _unary_model(op, elem)
    got = graphc.onnx.compile(model)(x)["y"]
    with np.errstate(all="ignore"):
        want = reference(x.astype(np.float64))
    assert got.dtype == dtype
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[~finite], want[~finite].astype(dtype))
    ulp = np.spacing(np.abs(want[finite]).astype(dtype)).astype(np.float64)
    assert np.max(np.abs(got[finite] - want[finite]) / ulp) <= 5


def test_a_shape_computed_from_an_input_is_fixed_at_import(rng):
    # Reshape's target comes from the input `s` through Mul and Cast: the backend learns that
    # `s` must be known (NeedsValue names it), fixes it and folds the arithmetic
    nodes = [_const("one", np.array([1.0], np.float32)),
             helper.make_node("Cast", ["s"], ["s_float"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["s_float", "one"], ["scaled"]),
             helper.make_node("Cast", ["scaled"], ["target"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    model = _model(nodes, [("x", TensorProto.FLOAT, [2, 3, 4]), ("s", TensorProto.INT64, [2])],
                   [("y", TensorProto.FLOAT, [6, 4])])
    with pytest.raises(graphc.onnx.NeedsValue, match="computed from the graph input"):
        graphc.onnx.load(model)
    x, s = rng.standard_normal((2, 3, 4), np.float32), np.array([6, 4], np.int64)
    (y,) = graphc.onnx.Backend.prepare(model).run([x, s])
    np.testing.assert_array_equal(y, _onnxruntime(model, x, s)[0])


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_floor_divide_and_integer_power_export_to_onnxruntime(dtype):
    # graphc -> ONNX: // through Mod (the divisor's sign), guarded where Div would trap; an
    # integer power as Pow (without overflow: onnxruntime saturates where numpy wraps)
    info = np.iinfo(dtype)
    a = np.array([7, -7, 7, -7, 6, 0, 5, -5, info.min, info.max, 3, -2], dtype)
    b = np.array([2, 2, -2, -2, 3, 4, 0, -1, -1, 7, 5, 3], dtype)
    e = np.array([2, 3, 0, 1, 4, 5, 9, 2, 0, 1, 12, 7], dtype)

    def fn(x, y, z):
        return graphc.floor_divide(x, y), graphc.power(y, z)

    specs = [graphc.tensor(("n",), dtype)] * 3
    model = graphc.onnx.export(fn, None, *specs)
    onnx.checker.check_model(model, full_check=True)
    with np.errstate(all="ignore"):
        want = [np.floor_divide(a, b), np.power(b, e)]
    for got in (_onnxruntime(model, a, b, e), graphc.compile(fn, *specs)(a, b, e)):
        for g, w in zip(got, want):
            assert g.dtype == w.dtype
            np.testing.assert_array_equal(g, w)


def test_opset_10_forms_clip_bounds_and_dropout_ratio_as_attributes(rng):
    nodes = [helper.make_node("Clip", ["x"], ["clipped"], min=-0.5, max=0.75),
             helper.make_node("Clip", ["x"], ["low"], min=0.0),
             helper.make_node("Dropout", ["clipped"], ["d"], ratio=0.3),
             helper.make_node("ReduceSum", ["d"], ["s"], axes=[1], keepdims=0),
             helper.make_node("ReduceMean", ["low"], ["m"], axes=[-1]),
             helper.make_node("ArgMax", ["x"], ["a"], axis=-1, keepdims=0)]
    model = _model(nodes, [("x", TensorProto.FLOAT, ["n", 5])],
                   [("s", TensorProto.FLOAT, ["n"]), ("m", TensorProto.FLOAT, ["n", 1]),
                    ("a", TensorProto.INT64, ["n"])], opset=10)
    compiled = graphc.onnx.compile(model)
    for n in (1, 4):
        _assert_like_onnxruntime(model, compiled, rng.standard_normal((n, 5), np.float32))


# shape ops

def _sym_model(nodes, inputs, outputs, opset=17, initializers=()):
    """A model from nodes; inputs and outputs as (name, elem type, shape with dim_params)."""
    graph = helper.make_graph(
        nodes, "shape_ops",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), n) for n, v in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return model


def _ort(model, feeds: dict) -> dict:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def _matches_ort_at_each_size(model, feeds_per_size, **load_options):
    """One compiled model, run on every feed dict; each output equals ONNX Runtime's (values,
    shape and dtype)."""
    compiled = graphc.compile(graphc.onnx.load(model, **load_options))
    for feeds in feeds_per_size:
        got = compiled(*feeds.values())
        want = _ort(model, feeds)
        assert set(got) == set(want)
        for name, w in want.items():
            assert got[name].dtype == w.dtype, (name, got[name].dtype, w.dtype)
            np.testing.assert_allclose(got[name], w, rtol=1e-5, atol=1e-6, err_msg=name)
    return compiled


def _input_shapes(graph):
    return [tuple(graph.nodes[i].shape) for i in graph.inputs]


def _output_shapes(graph):
    return [tuple(graph.nodes[i].shape) for i in graph.outputs]


def _ops(graph):
    return [n.op for n in graph.nodes]


B, T = Dim(("batch",)), Dim(("seq",))
F32, I64 = TensorProto.FLOAT, TensorProto.INT64


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _flatten_batch_model():
    """torch's x.view(x.size(0), -1): Shape -> Gather(0) -> Unsqueeze -> Concat([-1])."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), _const("zero", np.int64(0)),
             helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
             _const("ax0", np.array([0], np.int64)),
             helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"]),
             _const("minus1", np.array([-1], np.int64)),
             helper.make_node("Concat", ["b1", "minus1"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    return _sym_model(nodes, [("x", F32, ["batch", 3, 4])], [("y", F32, None)])


def test_shape_gather_unsqueeze_concat_reshape_folds_for_a_symbolic_batch(rng):
    model = _flatten_batch_model()
    graph = graphc.onnx.load(model)
    assert _input_shapes(graph) == [(B, 3, 4)]
    assert _output_shapes(graph) == [(B, 12)]
    assert _ops(graph) == ["input", "reshape"]          # the shape arithmetic left no node
    _matches_ort_at_each_size(model, [{"x": _rand(rng, n, 3, 4)} for n in (2, 5)])


def test_shape_slice_concat_reshape_merges_the_last_axes_of_symbolic_sizes(rng):
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             _const("st", np.array([0], np.int64)), _const("en", np.array([2], np.int64)),
             helper.make_node("Slice", ["s", "st", "en"], ["lead"]),
             _const("width", np.array([32], np.int64)),
             helper.make_node("Concat", ["lead", "width"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"]),
             helper.make_node("Shape", ["y"], ["y_shape"], start=-2)]
    model = _sym_model(nodes, [("x", F32, ["batch", "seq", 4, 8])],
                       [("y", F32, None), ("y_shape", I64, None)])
    graph = graphc.onnx.load(model)
    assert _output_shapes(graph) == [(B, T, 32), (2,)]
    _matches_ort_at_each_size(model, [{"x": _rand(rng, b, t, 4, 8)} for b, t in [(1, 3), (4, 2)]])


def test_expand_to_a_target_with_minus_ones_made_by_equal_and_where(rng):
    """torch's x.expand(-1, 3, -1): -1 entries replaced by 1 through Equal/Where at import."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             _const("st", np.array([0], np.int64)), _const("en", np.array([1], np.int64)),
             helper.make_node("Slice", ["s", "st", "en"], ["b1"]),
             _const("rest", np.array([3, -1], np.int64)),
             helper.make_node("Concat", ["b1", "rest"], ["want"], axis=0),
             _const("minus1", np.array([-1], np.int64)),
             helper.make_node("Equal", ["want", "minus1"], ["is_free"]),
             _const("ones", np.array([1, 1, 1], np.int64)),
             helper.make_node("Where", ["is_free", "ones", "want"], ["target"]),
             helper.make_node("Expand", ["x", "target"], ["y"])]
    model = _sym_model(nodes, [("x", F32, ["batch", 1, 4])], [("y", F32, None)])
    graph = graphc.onnx.load(model)
    assert _output_shapes(graph) == [(B, 3, 4)]
    assert "equal" not in _ops(graph) and "where" not in _ops(graph)
    _matches_ort_at_each_size(model, [{"x": _rand(rng, n, 1, 4)} for n in (1, 6)])


def test_a_size_comparison_only_the_run_time_can_tell_is_computed_in_the_graph(rng):
    """Equal(batch, 1) is not known at import: it becomes a run-time comparison."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), _const("zero", np.int64(0)),
             helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
             _const("one", np.int64(1)),
             helper.make_node("Equal", ["b", "one"], ["single"]),
             _const("two", np.float32(2)),
             helper.make_node("Mul", ["x", "two"], ["doubled"]),
             helper.make_node("Where", ["single", "doubled", "x"], ["y"])]
    model = _sym_model(nodes, [("x", F32, ["batch", 3])], [("y", F32, None)])
    compiled = _matches_ort_at_each_size(model, [{"x": _rand(rng, n, 3)} for n in (1, 4)])
    assert "size" in _ops(compiled.graph)


def test_range_over_a_symbolic_length_is_an_iota(rng):
    """Position ids: Range(0, seq, 1) then an embedding Gather, at two sequence lengths."""
    table = _rand(rng, 16, 8)
    nodes = [helper.make_node("Shape", ["x"], ["s"]), _const("one", np.int64(1)),
             helper.make_node("Gather", ["s", "one"], ["t"], axis=0),
             _const("start", np.int64(0)), _const("step", np.int64(1)),
             helper.make_node("Range", ["start", "t", "step"], ["positions"]),
             helper.make_node("Gather", ["table", "positions"], ["pos"], axis=0),
             helper.make_node("Add", ["x", "pos"], ["y"])]
    model = _sym_model(nodes, [("x", F32, ["batch", "seq", 8])],
                       [("y", F32, None), ("positions", I64, None)],
                       initializers=[("table", table)])
    graph = graphc.onnx.load(model)
    assert _output_shapes(graph) == [(B, T, 8), (T,)]
    assert "iota" in _ops(graph)
    _matches_ort_at_each_size(model, [{"x": _rand(rng, b, t, 8)} for b, t in [(2, 3), (1, 7)]])


def test_movement_ops_on_a_symbolic_batch_match_onnxruntime(rng):
    """Transpose, Slice (negative step, INT_MAX end), Split, Pad, Tile, Trilu, GatherElements,
    Einsum, Flatten, Squeeze/Unsqueeze, ConstantOfShape over a symbolic batch."""
    big = np.iinfo(np.int64).max
    w = _rand(rng, 6, 5)
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),                # (B, 6, 4)
        _const("st", np.array([-1, 0], np.int64)), _const("en", np.array([-big, big], np.int64)),
        _const("ax", np.array([1, 2], np.int64)), _const("sp", np.array([-2, 1], np.int64)),
        helper.make_node("Slice", ["xt", "st", "en", "ax", "sp"], ["rev"]),         # (B, 3, 4)
        _const("parts", np.array([1, 3], np.int64)),
        helper.make_node("Split", ["x", "parts"], ["head", "tail"], axis=1),          # (B, 1|3, 6)
        _const("pads", np.array([0, 1, 0, 0, 2, 1], np.int64)),
        helper.make_node("Pad", ["tail", "pads"], ["padded"], mode="reflect"),        # (B, 6, 7)
        _const("reps", np.array([1, 1, 2], np.int64)),
        helper.make_node("Tile", ["head", "reps"], ["tiled"]),                        # (B, 1, 12)
        _const("k", np.int64(-1)),
        helper.make_node("Trilu", ["x", "k"], ["lower"], upper=0),
        helper.make_node("GatherElements", ["rev", "picks"], ["picked"], axis=2),    # (B, 2, 4)
        helper.make_node("Einsum", ["x", "w"], ["mixed"], equation="bij,jk->bik"),   # (B, 4, 5)
        helper.make_node("Flatten", ["mixed"], ["flat"], axis=1),                     # (B, 20)
        _const("ax1", np.array([1], np.int64)),
        helper.make_node("Unsqueeze", ["flat", "ax1"], ["flat1"]),
        helper.make_node("Squeeze", ["flat1", "ax1"], ["flat2"]),
        helper.make_node("Shape", ["flat2"], ["fs"]),
        helper.make_node("ConstantOfShape", ["fs"], ["ones"],
                         value=numpy_helper.from_array(np.array([1.5], np.float32))),
        helper.make_node("Add", ["flat2", "ones"], ["shifted"]),
    ]
    model = _sym_model(nodes, [("x", F32, ["batch", 4, 6]), ("picks", I64, ["batch", 2, 4])],
                       [(n, F32, None) for n in ("rev", "padded", "tiled", "lower", "picked",
                                                 "shifted")],
                       initializers=[("w", w)])
    graph = graphc.onnx.load(model)
    assert _output_shapes(graph) == [(B, 3, 4), (B, 6, 7), (B, 1, 12), (B, 4, 6), (B, 2, 4),
                                     (B, 20)]
    _matches_ort_at_each_size(model, [{"x": _rand(rng, n, 4, 6),
                                       "picks": rng.integers(-4, 4, (n, 2, 4)).astype(np.int64)}
                                      for n in (1, 3)])


def test_reversing_a_symbolic_axis_reads_it_backwards_at_run_time(rng):
    """torch's x.flip(0) on a dynamic batch: Slice(-1, -INT_MAX, step -1)."""
    big = np.iinfo(np.int64).max
    nodes = [_const("st", np.array([-1, 0], np.int64)),
             _const("en", np.array([-big, big], np.int64)),
             _const("ax", np.array([0, 1], np.int64)), _const("sp", np.array([-1, 2], np.int64)),
             helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])]
    model = _sym_model(nodes, [("x", F32, ["batch", 5])], [("y", F32, None)])
    assert _output_shapes(graphc.onnx.load(model)) == [(B, 3)]
    _matches_ort_at_each_size(model, [{"x": _rand(rng, n, 5)} for n in (1, 4, 0)])


def test_size_and_reduce_prod_of_symbolic_shapes(rng):
    """Size is computed at run time; ReduceProd of a shape folds (B*3*4) into a Reshape."""
    nodes = [helper.make_node("Size", ["x"], ["n"]),
             helper.make_node("Cast", ["n"], ["nf"], to=F32),
             helper.make_node("Div", ["x", "nf"], ["scaled"]),
             helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("ReduceProd", ["s"], ["total"], keepdims=1),
             helper.make_node("Reshape", ["x", "total"], ["flat"])]
    model = _sym_model(nodes, [("x", F32, ["batch", 3, 4])],
                       [("scaled", F32, None), ("n", I64, None), ("flat", F32, None)], opset=13)
    graph = graphc.onnx.load(model)
    assert _output_shapes(graph) == [(B, 3, 4), (), (B * 12,)]
    _matches_ort_at_each_size(model, [{"x": _rand(rng, n, 3, 4)} for n in (2, 5)])


def test_every_constant_attribute_form_matches_onnxruntime(rng):
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.array([5.0, 7.0], np.float32)),
                                       numpy_helper.from_array(np.array([1, 4], np.int64)),
                                       [2, 3])
    forms = {"value": numpy_helper.from_array(np.arange(3, dtype=np.float32)),
             "value_float": 2.5, "value_floats": [1.0, 2.0, 3.0], "value_int": 7,
             "value_ints": [1, -2, 3], "sparse_value": sparse}
    nodes = [helper.make_node("Constant", [], [f"c_{k}"], **{k: v}) for k, v in forms.items()]
    nodes += [helper.make_node("Add", ["x", "c_value"], ["y"]), _const("zero", np.float32(0)),
              helper.make_node("Add", ["c_sparse_value", "zero"], ["dense"])]  # (ORT: dense)
    outputs = [("y", F32, None), ("dense", F32, None)] + [
        (f"c_{k}", I64 if "int" in k else F32, None) for k in forms if k != "sparse_value"]
    model = _sym_model(nodes, [("x", F32, ["batch", 3])], outputs)
    _matches_ort_at_each_size(model, [{"x": _rand(rng, n, 3)} for n in (2, 1)])


def test_the_attribute_forms_of_opset_9_match_onnxruntime(rng):
    """Before opset 10/11/13: Slice's bounds, Pad's widths and value, Split's parts and the
    Squeeze/Unsqueeze axes are attributes."""
    nodes = [helper.make_node("Slice", ["x"], ["cut"], starts=[1, -100], ends=[100, -1],
                              axes=[1, 2]),                                       # (B, 3, 4)
             helper.make_node("Pad", ["cut"], ["padded"], pads=[0, 1, 0, 0, 0, 2],
                              value=-1.5),                                        # (B, 4, 6)
             helper.make_node("Split", ["padded"], ["left", "right"], axis=2, split=[2, 4]),
             helper.make_node("Unsqueeze", ["left"], ["left4"], axes=[0]),
             helper.make_node("Squeeze", ["left4"], ["back"], axes=[0]),
             helper.make_node("Concat", ["right", "back"], ["y"], axis=2)]
    model = _sym_model(nodes, [("x", F32, ["batch", 4, 5])], [("y", F32, None)], opset=9)
    assert _output_shapes(graphc.onnx.load(model)) == [(B, 4, 6)]
    _matches_ort_at_each_size(model, [{"x": _rand(rng, n, 4, 5)} for n in (3, 1)])


def test_a_shape_traced_from_constants_only_is_known_at_import(rng):
    """GatherElements traces graphc ops even on constants; the importer folds the result, so
    the Reshape gets a static target."""
    nodes = [_const("table", np.array([[4, 3, -1]], np.int64)),
             _const("order", np.array([[2, 1, 0]], np.int64)),
             helper.make_node("GatherElements", ["table", "order"], ["picked"], axis=1),
             _const("flat", np.array([-1], np.int64)),
             helper.make_node("Reshape", ["picked", "flat"], ["target"]),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    model = _sym_model(nodes, [("x", F32, ["batch", 12])], [("y", F32, None)])
    assert _output_shapes(graphc.onnx.load(model)) == [(B, 3, 4)]
    _matches_ort_at_each_size(model, [{"x": _rand(rng, n, 12)} for n in (2, 3)])


def test_dims_rename_a_symbol_or_fix_it_to_an_int(rng):
    model = _flatten_batch_model()
    renamed = graphc.onnx.load(model, dims={"batch": "B"})
    assert _input_shapes(renamed) == [(Dim(("B",)), 3, 4)]
    assert _output_shapes(renamed) == [(Dim(("B",)), 12)]
    fixed = graphc.onnx.load(model, dims={"batch": 4})
    assert _input_shapes(fixed) == [(4, 3, 4)] and _output_shapes(fixed) == [(4, 12)]
    x = _rand(rng, 4, 3, 4)
    np.testing.assert_array_equal(graphc.compile(fixed)(x)["y"], x.reshape(4, 12))


def test_weights_as_inputs_serve_several_weight_sets(rng):
    """An initializer becomes an input after the model's own: one build, two weight sets."""
    nodes = [_const("target", np.array([-1, 12], np.int64)),
             helper.make_node("Reshape", ["table", "target"], ["flat_table"]),
             helper.make_node("Gather", ["flat_table", "ids"], ["rows"], axis=0)]
    table = _rand(rng, 5, 3, 4)
    model = _sym_model(nodes, [("ids", I64, ["batch"])], [("rows", F32, None)],
                       initializers=[("table", table)])
    graph = graphc.onnx.load(model, weights_as_inputs=True)
    assert graph.arg_names == ("ids", "table")
    assert _input_shapes(graph) == [(B,), (5, 3, 4)]
    compiled = graphc.compile(graph)
    ids = np.array([4, -1, 0], np.int64)
    for weights in (table, _rand(rng, 5, 3, 4)):
        np.testing.assert_array_equal(compiled(ids, weights)["rows"], weights.reshape(5, 12)[ids])
    np.testing.assert_array_equal(compiled(ids, table)["rows"], _ort(model, {"ids": ids})["rows"])


def test_every_unsupported_op_type_is_listed_at_once():
    nodes = [helper.make_node("FancyOp", ["x"], ["a"], name="first_fancy"),
             helper.make_node("FancyOp", ["a"], ["b"], name="second_fancy"),
             helper.make_node("OtherOp", ["b"], ["y"], name="the_other"),
             helper.make_node("Relu", ["y"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F32, [2])],
                              [helper.make_tensor_value_info("z", F32, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(graphc.onnx.OnnxError) as info:
        graphc.onnx.load(model)
    message = str(info.value)
    assert "2 ONNX op type(s)" in message and "opset 17" in message
    for part in ("FancyOp", "'first_fancy'", "'second_fancy'", "OtherOp", "'the_other'"):
        assert part in message
    assert "Relu" not in message


def test_slicing_part_of_a_symbolic_axis_names_the_node_and_the_axis():
    nodes = [_const("st", np.array([1], np.int64)), _const("en", np.array([4], np.int64)),
             helper.make_node("Slice", ["x", "st", "en"], ["y"], name="drop_first")]
    model = _sym_model(nodes, [("x", F32, ["batch", 3])], [("y", F32, None)])
    with pytest.raises(graphc.onnx.OnnxError, match=r"symbolic axis 0 \(batch\)") as info:
        graphc.onnx.load(model)
    assert "drop_first" in str(info.value)


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


@pytest.mark.parametrize("attrs", [
    dict(mode="avg", coordinate_transformation_mode="half_pixel"),
    dict(mode="avg", coordinate_transformation_mode="output_half_pixel", spatial_scale=0.5),
], ids=["avg_half_pixel", "avg_output_half_pixel_scaled"])
def test_roi_align_serves_every_roi_count(attrs):
    node = helper.make_node("RoiAlign", ["x", "rois", "index"], ["y"], output_height=3,
                            output_width=2, sampling_ratio=2, **attrs)
    graph = helper.make_graph([node], "roi_align", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 8, 9]),
        helper.make_tensor_value_info("rois", TensorProto.FLOAT, ["R", 4]),
        helper.make_tensor_value_info("index", TensorProto.INT64, ["R"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    rng = np.random.default_rng(15)
    runs = []
    for n, r in ((1, 2), (3, 5)):
        corner = rng.uniform(-1.0, 7.0, (r, 2))
        rois = np.concatenate([corner, corner + rng.uniform(0.5, 5.0, (r, 2))], 1)
        runs.append({"x": rng.standard_normal((n, 2, 8, 9)).astype(np.float32),
                     "rois": rois.astype(np.float32),
                     "index": rng.integers(0, n, r).astype(np.int64)})
    _nn_against_onnxruntime(model, runs)


def test_same_padding_with_stride_on_a_symbolic_size_names_the_node():
    w = np.ones((2, 1, 3, 3), np.float32)
    model = _nn_model([helper.make_node("Conv", ["x", "w"], ["y"], name="stem",
                                        auto_pad="SAME_UPPER", strides=[2, 2])],
                      [("x", ["N", 1, "H", "W"])], [("y", None)], [("w", w)])
    with pytest.raises(graphc.onnx.OnnxError, match=r"(?s)SAME with stride 2 on the "
                       r"symbolic spatial size H.*'stem'"):
        graphc.onnx.load(model)
