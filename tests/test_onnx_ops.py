"""ONNX op handlers on hand-built models (onnx.helper): symbolic shapes at import, one compiled
model run at several sizes, compared with ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the onnx package is not installed "
                                         "(pip install 'graphc[onnx]')")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import graphc  # noqa: E402
import graphc.onnx  # noqa: E402
from graphc.ir.types import Dim  # noqa: E402


# shape ops

def _const(name, value):
    return helper.make_node("Constant", [], [name],
                            value=numpy_helper.from_array(np.asarray(value), name))


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
