"""target="wasm32": WASI modules linked by zig, run through wasmtime on this host, against
numpy; artifacts; the sandbox turns a corrupted size into an exception."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphc
import graphc_runtime
from graphc import toolchain
from graphc_runtime import LoadError
from random_programs import NumpyOps, run_program, programs

pytest.importorskip("wasmtime", reason="the wasm32 runtime needs wasmtime (graphc[wasm])")
# slow suite: the first wasm32 link in a fresh cache builds zig's wasi-libc and compiler-rt
# (~45 s on 2 cores, once per cache); later builds link in ~0.1 s
pytestmark = [pytest.mark.skipif(toolchain.zig_cc() is None,
                                 reason="target='wasm32' links with the ziglang package"),
              pytest.mark.slow]

rng0 = np.random.default_rng(3)
W1 = (rng0.standard_normal((16, 32)) * 0.3).astype(np.float32)
W2 = (rng0.standard_normal((32, 5)) * 0.3).astype(np.float32)


def mlp(x):
    return graphc.softmax(graphc.relu(x @ W1) @ W2, -1)


def _np_mlp(x):
    z = np.maximum(x.astype(np.float64) @ W1, 0) @ W2
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


OPS = {
    "exp": (lambda x: graphc.exp(graphc.tanh(x)), lambda x: np.exp(np.tanh(x))),
    "log": (lambda x: graphc.log(graphc.abs(x) + 1.0), lambda x: np.log(np.abs(x) + 1)),
    "tanh": (graphc.tanh, np.tanh),
    "sigmoid": (graphc.sigmoid, lambda x: 1 / (1 + np.exp(-x))),
    "sqrt": (lambda x: graphc.sqrt(graphc.abs(x)), lambda x: np.sqrt(np.abs(x))),
    "erf": (graphc.erf, None),
    "sum": (lambda x: graphc.sum(x, -1), lambda x: x.sum(-1)),
    "mean0": (lambda x: graphc.mean(x, 0), lambda x: x.mean(0)),
    "max": (lambda x: graphc.max(x, -1), lambda x: x.max(-1)),
    "softmax": (lambda x: graphc.softmax(x, -1),
                lambda x: np.exp(x - x.max(-1, keepdims=True)) /
                np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)),
    "matmul": (lambda x: x @ x.T, lambda x: x @ x.T),
    "transpose": (lambda x: x.T * 2.0, lambda x: x.T * 2),
    "where": (lambda x: graphc.where(x > 0, x, x * 0.1), lambda x: np.where(x > 0, x, x * 0.1)),
}


@pytest.mark.parametrize("name", list(OPS))
def test_ops_match_numpy(name, rng):
    fn, ref = OPS[name]
    c = graphc.compile(fn, graphc.tensor(("B", 37)), target="wasm32")
    x = rng.standard_normal((6, 37)).astype(np.float32)
    got = c(x)
    if ref is None:
        import math
        ref = np.vectorize(math.erf)
    np.testing.assert_allclose(got, ref(x.astype(np.float64)), rtol=2e-5, atol=2e-6)


def test_mlp_matches_numpy_and_the_native_build(rng):
    spec = graphc.tensor(("B", 16))
    wasm, native = graphc.compile(mlp, spec, target="wasm32"), graphc.compile(mlp, spec)
    assert "wasm32" in repr(wasm)
    for batch in (1, 7, 300):
        x = rng.standard_normal((batch, 16)).astype(np.float32)
        got = wasm(x)
        np.testing.assert_allclose(got, _np_mlp(x), rtol=1e-5, atol=1e-7)
        assert np.abs(got - native(x)).max() <= 1e-6


def test_inputs_are_checked_before_the_module_runs(rng):
    c = graphc.compile(mlp, graphc.tensor(("B", 16)), target="wasm32")
    with pytest.raises(graphc_runtime.InputError if hasattr(graphc_runtime, "InputError")
                       else Exception, match="16"):
        c(np.ones((3, 15), np.float32))
    with pytest.raises(Exception, match="float32"):
        c(np.ones((3, 16), np.int32))
    np.testing.assert_allclose(c(np.ones((2, 16), np.float32)).sum(-1), 1, rtol=1e-6)


def test_artifact_runs_through_the_runtime_on_any_host(tmp_path, rng):
    c = graphc.compile(mlp, graphc.tensor(("B", 16)), target="wasm32")
    path = c.export(str(tmp_path / "mlp.gcx"))
    with zipfile.ZipFile(path) as z:
        manifest = json.loads(z.read("manifest.json"))
        assert manifest["target"]["kind"] == "wasm32"
        assert z.read(manifest["library"])[:4] == b"\0asm"
    model = graphc_runtime.load(path)
    x = rng.standard_normal((9, 16)).astype(np.float32)
    np.testing.assert_allclose(model(x), _np_mlp(x), rtol=1e-5, atol=1e-7)
    # and from a native build: export(target="wasm32")
    path2 = graphc.compile(mlp, graphc.tensor(("B", 16))).export(str(tmp_path / "m2.gcx"),
                                                                 target="wasm32")
    np.testing.assert_allclose(graphc_runtime.load(path2)(x), _np_mlp(x), rtol=1e-5,
                               atol=1e-7)


def test_a_corrupted_size_traps_in_the_sandbox(tmp_path, rng):
    """The module writes where a wrong size sends it: wasmtime stops it at its memory's end
    and the call raises; this process, its memory and later calls are unaffected."""
    c = graphc.compile(mlp, graphc.tensor(("B", 16)), target="wasm32")
    exe = c.executable
    x = rng.standard_normal((4, 16)).astype(np.float32)
    good = exe(x)
    real_call, real_ws = exe._call, exe._ws

    def lying(checked, dims, shapes):
        # the module is told 2**22 rows (its buffers hold 4) and given a 64-byte workspace:
        # its writes run hundreds of MB past the end of its memory
        return real_call(checked, np.array([1 << 22], np.int64), shapes)
    exe._call, exe._ws = lying, lambda store, dims: 64
    with pytest.raises(RuntimeError, match="trapped"):
        exe(x)
    exe._call, exe._ws = real_call, real_ws
    np.testing.assert_array_equal(exe(x), good)


def test_module_with_other_weights_is_refused(tmp_path):
    c = graphc.compile(mlp, graphc.tensor(("B", 16)), target="wasm32")
    from graphc_runtime.wasm import WasmExecutable
    with open(c.entry.path("graph.wasm"), "rb") as f:
        wasm = f.read()
    wrong = [np.zeros(w.shape[::-1] + (1,), w.dtype) for w in c.plan.constants]
    with pytest.raises(LoadError, match="different signature or different weights"):
        WasmExecutable(wasm, c.signature, wrong)
    with pytest.raises(LoadError, match="not a loadable graphc wasm32 module"):
        WasmExecutable(b"\0asm\x01\0\0\0garbage", c.signature, c.plan.constants)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), st.integers(1, 6))
def test_random_graphs_match_numpy(program, batch):
    shapes, steps = program
    c = graphc.compile(lambda *xs: run_program(graphc, shapes, steps, xs),
                       *[graphc.tensor(s) for s in shapes], target="wasm32")
    rng = np.random.default_rng(batch)
    xs = [rng.standard_normal([batch if d == "B" else d for d in s]).astype(np.float32)
          for s in shapes]
    want = run_program(NumpyOps, shapes, steps, [x.astype(np.float64) for x in xs])
    np.testing.assert_allclose(c(*xs), want, rtol=1e-4, atol=1e-5)


def test_training_step_on_wasm32_matches_the_cpu():
    """nn.TrainStep(target="wasm32"): parameters updated in place through the module's
    memory, 200 SGD steps equal to the native step's."""
    from graphc import nn, optim
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    y = np.array([[0], [1], [1], [0]], np.float32)

    def make():
        return nn.Sequential(nn.Linear(2, 8, seed=0), nn.Tanh(), nn.Linear(8, 1, seed=1),
                             nn.Sigmoid())
    native, wasm = make(), make()
    specs = (nn.train.data_spec(x, "x"), nn.train.data_spec(y, "y"))
    s1 = nn.TrainStep(native, nn.mse, optim.SGD(0.5), *specs)
    s2 = nn.TrainStep(wasm, nn.mse, optim.SGD(0.5), *specs, target="wasm32")
    for _ in range(200):
        assert np.isclose(s2(x, y), s1(x, y), rtol=1e-4)
    for k, v in native.named_parameters().items():
        np.testing.assert_allclose(wasm.named_parameters()[k], v, rtol=1e-4, atol=1e-5)
