"""Pytrees: nested tuples, lists, dicts and None as inputs and outputs of every public entry
point; gradients shaped like their arguments. References: numpy computed directly and float64
central differences."""
import json
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import graphc
import graphc_runtime
from graphc import nn
from graphc.tree import TreeDef, flatten, leaf_paths, tree_map, unflatten
from helpers import BLOCK_COMPILER_IMPORTS

F64 = "float64"


def mlp_loss(params, x, y):
    h = graphc.tanh(x @ params["w1"] + params["b1"])
    return graphc.mean((h @ params["w2"] - y) ** 2)


def mlp_loss_numpy(params, x, y):
    h = np.tanh(x @ params["w1"] + params["b1"])
    return np.mean((h @ params["w2"] - y) ** 2)


def mlp_grads_numpy(params, x, y):
    """The analytic gradient of mlp_loss, written out in numpy."""
    h = np.tanh(x @ params["w1"] + params["b1"])
    r = h @ params["w2"] - y
    d_out = 2 * r / r.size
    d_h = d_out @ params["w2"].T * (1 - h * h)
    return {"w1": x.T @ d_h, "b1": d_h.sum(0), "w2": h.T @ d_out}, d_h @ params["w1"].T


def param_specs(dtype="float32"):
    return {"w1": graphc.tensor((3, 5), dtype), "b1": graphc.tensor((5,), dtype),
            "w2": graphc.tensor((5, 2), dtype)}


def sample_params(rng, dtype=np.float32):
    return {k: rng.standard_normal(s.shape).astype(dtype) for k, s in param_specs().items()}


# ------------------------------------------------------------------ the tree module

trees = st.recursive(
    st.integers(0, 100) | st.none(),
    lambda children: (st.lists(children, max_size=3) |
                      st.lists(children, max_size=3).map(tuple) |
                      st.dictionaries(st.text("abc", min_size=1, max_size=2), children,
                                      max_size=3)),
    max_leaves=12)


@given(trees)
@settings(max_examples=100, deadline=None, derandomize=True)
def test_flatten_unflatten_and_json_round_trip(tree):
    leaves, treedef = flatten(tree)
    assert all(isinstance(leaf, int) for leaf in leaves)
    assert unflatten(treedef, leaves) == tree
    assert treedef.num_leaves == len(leaves) == len(leaf_paths(treedef))
    again = TreeDef.from_json(json.loads(json.dumps(treedef.to_json())))
    assert again == treedef
    assert unflatten(again, leaves) == tree


def test_dicts_keep_insertion_order():
    leaves, treedef = flatten({"z": 1, "a": 2})
    assert leaves == [1, 2]
    assert list(unflatten(treedef, [3, 4])) == ["z", "a"]


def test_deep_nesting_needs_no_recursion():
    tree = 7
    for _ in range(20000):
        tree = [tree]
    leaves, treedef = flatten(tree)
    assert leaves == [7]
    assert TreeDef.from_json(treedef.to_json()) == treedef
    rebuilt = unflatten(treedef, [8])
    for _ in range(20000):
        rebuilt = rebuilt[0]
    assert rebuilt == 8


def test_non_string_dict_keys_are_refused():
    with pytest.raises(TypeError, match="keys must be str"):
        flatten({1: 2})
    with pytest.raises(graphc.TraceError, match="not a pytree"):
        graphc.trace(lambda p: p, {1: graphc.tensor((2,))})


@pytest.mark.parametrize("bad", ["x", {"leaf": "*"}, {"dict": [["a"]]}, {"tuple": 3},
                                 {"dict": [["a", "*"], ["a", "*"]]}, 5, [1]])
def test_malformed_tree_json_is_a_value_error(bad):
    with pytest.raises(ValueError):
        TreeDef.from_json(bad)


def test_tree_map_over_two_trees():
    a = {"w": np.ones(2), "b": (np.zeros(1), None)}
    b = {"b": (np.full(1, 3.0), None), "w": np.full(2, 2.0)}   # same keys, other order
    out = tree_map(lambda x, y: x + y, a, b)
    np.testing.assert_array_equal(out["w"], [3.0, 3.0])
    np.testing.assert_array_equal(out["b"][0], [3.0])
    assert out["b"][1] is None


# ------------------------------------------------------------------ compile and call

def test_value_and_grad_over_three_arguments_compiles_nested(rng):
    """The line every JAX user writes: the result is (loss, (g0, g1, g2))."""
    def loss(w, b, x):
        return graphc.sum(graphc.tanh(x @ w + b) ** 2)

    specs = [graphc.tensor((4, 3)), graphc.tensor((3,)), graphc.tensor(("B", 4))]
    f = graphc.compile(graphc.value_and_grad(loss, argnums=(0, 1, 2)), *specs)
    w, b = rng.standard_normal((4, 3)), rng.standard_normal(3)
    x = rng.standard_normal((6, 4))
    w, b, x = (a.astype(np.float32) for a in (w, b, x))
    value, grads = f(w, b, x)
    assert isinstance(grads, tuple) and len(grads) == 3
    t = np.tanh(x @ w + b)
    d = 2 * t * (1 - t * t)
    np.testing.assert_allclose(value, np.sum(t * t), rtol=1e-5)
    for got, want in zip(grads, (x.T @ d, d.sum(0), d @ w.T)):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-5)


def test_dict_of_parameters_gives_a_dict_of_gradients(rng):
    specs = (param_specs(), graphc.tensor(("B", 3)), graphc.tensor(("B", 2)))
    f = graphc.compile(graphc.value_and_grad(mlp_loss), *specs)
    params = sample_params(rng)
    x = rng.standard_normal((7, 3)).astype(np.float32)
    y = rng.standard_normal((7, 2)).astype(np.float32)
    loss, grads = f(params, x, y)
    assert isinstance(grads, dict) and list(grads) == ["w1", "b1", "w2"]
    want, _ = mlp_grads_numpy(params, x, y)
    np.testing.assert_allclose(loss, mlp_loss_numpy(params, x, y), rtol=1e-5)
    for k in params:
        np.testing.assert_allclose(grads[k], want[k], rtol=2e-4, atol=1e-5)


def test_pytree_gradients_match_central_differences(rng):
    specs = (param_specs(F64), graphc.tensor((4, 3), F64), graphc.tensor((4, 2), F64))
    g = graphc.compile(graphc.grad(mlp_loss, argnums=(0, 1)), *specs)
    params = sample_params(rng, np.float64)
    x, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    grad_params, grad_x = g(params, x, y)
    eps = 1e-6
    for key in params:
        direction = rng.standard_normal(params[key].shape)
        plus = {**params, key: params[key] + eps * direction}
        minus = {**params, key: params[key] - eps * direction}
        numeric = (mlp_loss_numpy(plus, x, y) - mlp_loss_numpy(minus, x, y)) / (2 * eps)
        np.testing.assert_allclose(np.sum(grad_params[key] * direction), numeric, rtol=1e-6)
    direction = rng.standard_normal(x.shape)
    numeric = (mlp_loss_numpy(params, x + eps * direction, y) -
               mlp_loss_numpy(params, x - eps * direction, y)) / (2 * eps)
    np.testing.assert_allclose(np.sum(grad_x * direction), numeric, rtol=1e-6)


def test_outputs_keep_their_structure(rng):
    def fn(p, x):
        y = x @ p["w"]
        return {"y": y, "stats": (graphc.sum(y), [graphc.max(y), None])}

    f = graphc.compile(fn, {"w": graphc.tensor((3, 2))}, graphc.tensor(("B", 3)))
    w = rng.standard_normal((3, 2)).astype(np.float32)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    out = f({"w": w}, x)
    assert list(out) == ["y", "stats"]
    total, rest = out["stats"]
    assert isinstance(rest, list) and rest[1] is None
    np.testing.assert_allclose(out["y"], x @ w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(total, np.sum(x @ w), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rest[0], np.max(x @ w), rtol=1e-6)


def test_single_tensor_stays_a_bare_array_and_a_list_stays_a_list(rng):
    x = rng.standard_normal(4).astype(np.float32)
    one = graphc.compile(lambda v: v * 2, graphc.tensor((4,)))(x)
    assert isinstance(one, np.ndarray)
    pair = graphc.compile(lambda v: [v + 1, v - 1], graphc.tensor((4,)))(x)
    assert isinstance(pair, list) and len(pair) == 2
    np.testing.assert_allclose(pair[1], x - 1)
    singleton = graphc.compile(lambda v: (v,), graphc.tensor((4,)))(x)
    assert isinstance(singleton, tuple) and len(singleton) == 1


def test_none_arguments_pass_through(rng):
    def fn(x, options):
        scale, unused = options
        assert unused is None
        return x * scale

    f = graphc.compile(fn, graphc.tensor((3,)), (graphc.tensor(()), None))
    x = rng.standard_normal(3).astype(np.float32)
    np.testing.assert_allclose(f(x, (np.float32(2.0), None)), 2 * x)


def test_evaluate_takes_and_returns_pytrees(rng):
    g = graphc.trace(lambda p, x: {"out": x @ p["w"] + p["b"]},
                     {"w": graphc.tensor((3, 2)), "b": graphc.tensor((2,))},
                     graphc.tensor(("B", 3)))
    p = {"w": rng.standard_normal((3, 2)).astype(np.float32),
         "b": rng.standard_normal(2).astype(np.float32)}
    x = rng.standard_normal((4, 3)).astype(np.float32)
    out = graphc.evaluate(g, p, x)
    np.testing.assert_allclose(out["out"], x @ p["w"] + p["b"], rtol=1e-5, atol=1e-6)


def test_has_aux_as_in_jax(rng):
    def loss(p, x):
        y = x @ p["w"]
        return graphc.sum(y * y), {"y": y}

    specs = ({"w": graphc.tensor((3, 2))}, graphc.tensor((4, 3)))
    w = rng.standard_normal((3, 2)).astype(np.float32)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    (value, aux), grads = graphc.compile(graphc.value_and_grad(loss, has_aux=True), *specs)(
        {"w": w}, x)
    np.testing.assert_allclose(value, np.sum((x @ w) ** 2), rtol=1e-5)
    np.testing.assert_allclose(aux["y"], x @ w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads["w"], 2 * x.T @ (x @ w), rtol=1e-4, atol=1e-5)
    grads2, aux2 = graphc.compile(graphc.grad(loss, has_aux=True), *specs)({"w": w}, x)
    np.testing.assert_allclose(grads2["w"], grads["w"], rtol=1e-6)
    np.testing.assert_allclose(aux2["y"], aux["y"], rtol=1e-6)
    with pytest.raises(graphc.GradError, match=r"\(value, aux\)"):
        graphc.compile(graphc.value_and_grad(lambda p, x: graphc.sum(x @ p["w"]), has_aux=True),
                       *specs)


def test_eager_grad_on_a_dict_of_arrays(rng):
    params = sample_params(rng, np.float64)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    grads = graphc.grad(mlp_loss)(params, x, y)
    want, _ = mlp_grads_numpy(params, x, y)
    assert list(grads) == list(params)
    for k in params:
        np.testing.assert_allclose(grads[k], want[k], rtol=1e-10, atol=1e-12)


def test_integer_leaf_in_a_differentiated_pytree_is_named():
    specs = ({"w": graphc.tensor((2,)), "idx": graphc.tensor((2,), "int64")},)
    with pytest.raises(graphc.GradError, match=r"argument 0\['idx'\] has dtype int64"):
        graphc.compile(graphc.grad(lambda p: graphc.sum(p["w"])), *specs)


# ------------------------------------------------------------------ input mismatches

@pytest.fixture(scope="module")
def mlp_step():
    specs = (param_specs(), graphc.tensor(("B", 3)), graphc.tensor(("B", 2)))
    return graphc.compile(graphc.value_and_grad(mlp_loss), *specs)


def test_missing_key_is_an_input_error_naming_it(mlp_step, rng):
    params = sample_params(rng)
    del params["b1"]
    x, y = np.zeros((2, 3), np.float32), np.zeros((2, 2), np.float32)
    with pytest.raises(graphc.InputError, match=r"params: expected a dict.*missing \['b1'\]"):
        mlp_step(params, x, y)


def test_wrong_leaf_shape_names_the_path(mlp_step, rng):
    params = sample_params(rng)
    params["w1"] = params["w1"][:2]
    x, y = np.zeros((2, 3), np.float32), np.zeros((2, 2), np.float32)
    with pytest.raises(graphc.InputError, match=r"params\['w1'\]"):
        mlp_step(params, x, y)


def test_wrong_container_and_arity_are_input_errors(mlp_step, rng):
    x, y = np.zeros((2, 3), np.float32), np.zeros((2, 2), np.float32)
    with pytest.raises(graphc.InputError, match="params: expected a dict"):
        mlp_step(list(sample_params(rng).values()), x, y)
    with pytest.raises(graphc.InputError, match="expected 3 arguments"):
        mlp_step(sample_params(rng), x)
    with pytest.raises(graphc.InputError, match="params: expected a dict"):
        graphc.evaluate(mlp_step.graph, (1, 2), x, y)


def test_dict_keys_in_another_order_match_by_key(mlp_step, rng):
    params = sample_params(rng)
    x = rng.standard_normal((3, 3)).astype(np.float32)
    y = rng.standard_normal((3, 2)).astype(np.float32)
    reordered = {k: params[k] for k in reversed(list(params))}
    _, g1 = mlp_step(params, x, y)
    _, g2 = mlp_step(reordered, x, y)
    for k in params:
        np.testing.assert_array_equal(g1[k], g2[k])


def test_non_spec_leaf_is_a_trace_error_naming_the_path():
    with pytest.raises(graphc.TraceError, match=r"argument p\['b'\] must be graphc.tensor"):
        graphc.trace(lambda p: p["a"], {"a": graphc.tensor((2,)), "b": 3})


def test_returning_a_non_tensor_leaf_names_its_place():
    with pytest.raises(graphc.TraceError, match=r"got float at result\['k'\]"):
        graphc.trace(lambda x: {"x": x, "k": 1.0}, graphc.tensor((2,)))


# ------------------------------------------------------------------ artifacts

@pytest.fixture(scope="module")
def structured_artifact(tmp_path_factory, mlp_step):
    path = str(tmp_path_factory.mktemp("tree") / "step.gcx")
    mlp_step.export(path)
    return path


def test_manifest_records_both_structures(structured_artifact):
    with zipfile.ZipFile(structured_artifact) as z:
        manifest = json.loads(z.read("manifest.json"))
        header = z.read("include/graphc_model.h").decode()
    sig = manifest["signature"]
    in_tree = TreeDef.from_json(sig["in_tree"])
    out_tree = TreeDef.from_json(sig["out_tree"])
    assert str(in_tree) == "({'w1': *, 'b1': *, 'w2': *}, *, *)"
    assert str(out_tree) == "(*, {'w1': *, 'b1': *, 'w2': *})"
    assert sig["arg_names"] == ["params", "x", "y"]
    for path in ("params.w1", "params.b1", "params.w2", "x", "y", "result.1.w2"):
        assert f"/* {path} */" in header
    assert header.index("/* params.w1 */") < header.index("/* params.b1 */") < \
        header.index("/* params.w2 */")


def test_loaded_artifact_returns_the_structures_without_the_compiler(structured_artifact,
                                                                    tmp_path, rng):
    params = sample_params(rng)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    y = rng.standard_normal((4, 2)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x, y=y, **params)
    script = BLOCK_COMPILER_IMPORTS + textwrap.dedent(f"""
        import numpy as np, graphc_runtime
        d = np.load({str(tmp_path / 'in.npz')!r}, allow_pickle=False)
        model = graphc_runtime.load({structured_artifact!r})
        params = {{k: d[k] for k in ("w1", "b1", "w2")}}
        loss, grads = model(params, d["x"], d["y"])
        assert isinstance(grads, dict) and list(grads) == ["w1", "b1", "w2"], grads
        np.savez({str(tmp_path / 'out.npz')!r}, loss=loss, **grads)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = np.load(tmp_path / "out.npz")
    want, _ = mlp_grads_numpy(params, x, y)
    np.testing.assert_allclose(out["loss"], mlp_loss_numpy(params, x, y), rtol=1e-5)
    for k in want:
        np.testing.assert_allclose(out[k], want[k], rtol=2e-4, atol=1e-5)


def test_loaded_artifact_checks_the_structure(structured_artifact):
    model = graphc_runtime.load(structured_artifact)
    with pytest.raises(graphc_runtime.InputError, match=r"missing \['w2'\]"):
        model({"w1": np.zeros((3, 5), np.float32), "b1": np.zeros(5, np.float32)},
              np.zeros((1, 3), np.float32), np.zeros((1, 2), np.float32))


# ------------------------------------------------------------------ nn: the functional form

def test_parameters_tree_is_the_named_parameters():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    tree = model.parameters_tree()
    assert isinstance(tree, dict)
    assert list(tree) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for k, arr in model.named_parameters().items():
        assert tree[k] is arr


def test_apply_runs_the_module_with_given_parameters(rng):
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    params = {k: rng.standard_normal(v.shape).astype(np.float32)
              for k, v in model.parameters_tree().items()}
    specs = tree_map(lambda a: graphc.tensor(a.shape), params)
    f = graphc.compile(lambda p, x: model.apply(p, x), specs, graphc.tensor(("B", 3)))
    x = rng.standard_normal((5, 3)).astype(np.float32)
    names = list(params)
    w0, b0, w1, b1 = (params[n] for n in names)
    want = np.tanh(x @ w0 + b0) @ w1 + b1
    np.testing.assert_allclose(f(params, x), want, rtol=1e-5, atol=1e-5)
    # the module's own arrays were not used
    assert not np.allclose(model.parameters_tree()[names[0]], w0)
    # eager apply on numpy arrays compiles on the fly
    np.testing.assert_allclose(model.apply(params, x), want, rtol=1e-5, atol=1e-5)


def test_apply_with_wrong_parameters_names_them():
    model = nn.Linear(3, 2)
    with pytest.raises(graphc.GraphcError, match=r"missing \['bias'\].*unknown \['b'\]"):
        graphc.compile(lambda p, x: model.apply(p, x),
                       {"weight": graphc.tensor((3, 2)), "b": graphc.tensor((2,))},
                       graphc.tensor((1, 3)))
    with pytest.raises(graphc.ShapeError, match=r"params\['weight'\] has shape \(2, 3\)"):
        graphc.compile(lambda p, x: model.apply(p, x),
                       {"weight": graphc.tensor((2, 3)), "bias": graphc.tensor((2,))},
                       graphc.tensor((1, 3)))


def test_jax_style_training_loop_learns(rng):
    model = nn.Sequential(nn.Linear(2, 8, seed=1), nn.Tanh(), nn.Linear(8, 2, seed=2))
    params = {k: v.copy() for k, v in model.parameters_tree().items()}
    specs = tree_map(lambda a: graphc.tensor(a.shape), params)

    def loss(p, x, y):
        return nn.cross_entropy(model.apply(p, x), y)

    step = graphc.compile(graphc.value_and_grad(loss), specs, graphc.tensor(("B", 2)),
                          graphc.tensor(("B",), "int64"))
    x = rng.standard_normal((128, 2)).astype(np.float32)
    y = ((x[:, 0] * x[:, 1]) > 0).astype(np.int64)      # XOR of the signs
    first, _ = step(params, x, y)
    for _ in range(300):
        value, grads = step(params, x, y)
        params = tree_map(lambda p, g: p - 0.5 * g, params, grads)
    logits = model.apply(params, x)
    assert value < 0.5 * first
    assert np.mean(np.argmax(logits, 1) == y) > 0.9


class Bilinear(nn.Module):
    """A module of two inputs: x W z^T, row by row."""

    def __init__(self, n: int, seed=0):
        super().__init__()
        self.add_param("w", np.random.default_rng(seed).standard_normal((n, n)))

    def forward(self, x, z):
        return graphc.sum((x @ self.param("w")) * z, axis=-1)


def test_modules_take_several_inputs(rng):
    layer = Bilinear(3)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    z = rng.standard_normal((4, 3)).astype(np.float32)
    w = layer.parameters_tree()["w"]
    want = np.sum((x @ w) * z, axis=-1)
    f = graphc.compile(lambda a, b: layer(a, b), graphc.tensor(("B", 3)), graphc.tensor(("B", 3)))
    np.testing.assert_allclose(f(x, z), want, rtol=1e-5, atol=1e-5)
    g = graphc.compile(lambda p, a, b: layer.apply(p, a, b), {"w": graphc.tensor((3, 3))},
                       graphc.tensor(("B", 3)), graphc.tensor(("B", 3)))
    np.testing.assert_allclose(g({"w": 2 * w}, x, z), 2 * want, rtol=1e-5, atol=1e-5)
    seq = nn.Sequential(layer, nn.Tanh())
    h = graphc.compile(lambda a, b: seq(a, b), graphc.tensor(("B", 3)), graphc.tensor(("B", 3)))
    np.testing.assert_allclose(h(x, z), np.tanh(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("runner", ["cpu", "cuda-stub"])
def test_every_backend_takes_and_returns_pytrees(runner, monkeypatch, rng):
    """The structure lives in the signature, so each target's executable rebuilds it (the
    CUDA build runs through the stub driver here)."""
    from targets import TARGETS

    def fn(p, x):
        return {"y": graphc.tanh(x @ p["w"] + p["b"]), "n": (graphc.sum(x),)}

    specs = ({"w": graphc.tensor((3, 2)), "b": graphc.tensor((2,))}, graphc.tensor(("B", 3)))
    f = TARGETS[runner].build(fn, specs, monkeypatch)
    p = {"w": rng.standard_normal((3, 2)).astype(np.float32),
         "b": rng.standard_normal(2).astype(np.float32)}
    x = rng.standard_normal((4, 3)).astype(np.float32)
    out = f(p, x)
    np.testing.assert_allclose(out["y"], np.tanh(x @ p["w"] + p["b"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["n"][0], x.sum(), rtol=1e-5)
    with pytest.raises(graphc.InputError, match=r"p: expected a dict"):
        f([p["w"], p["b"]], x)
