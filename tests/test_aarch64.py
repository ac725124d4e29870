"""target="aarch64": cross-compiled on this host with zig cc, checked as an AArch64 binary
here, and run under qemu-aarch64 (Debian's qemu-user): examples/c/run_model.c linked
statically (aarch64-linux-musl) with the model's object, on test graphs and a trained digits
model, against the x86 build of the same graph and numpy."""
from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

import graphc
import graphc_runtime
from graphc import toolchain
from graphc_runtime import LoadError
from graphc_runtime.cli import main as cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_MODEL = os.path.join(ROOT, "examples", "c", "run_model.c")
THREADS = os.path.join(ROOT, "graphc", "codegen", "threads.c")
QEMU = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
pytestmark = pytest.mark.skipif(toolchain.zig_cc() is None,
                                reason="target='aarch64' needs the ziglang package")
_no_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-aarch64 (Debian's qemu-user) is not "
                                                   "installed")


def needs_qemu(test):
    """Under qemu, in the slow suite: the first static link builds zig's musl and compiler-rt
    for aarch64 (~65 s on 2 cores, once per cache); later runs take ~0.3 s a graph."""
    return pytest.mark.slow(_no_qemu(test))

_rng = np.random.default_rng(7)
W1 = (_rng.standard_normal((12, 40)) * 0.3).astype(np.float32)
B1 = (_rng.standard_normal(40) * 0.1).astype(np.float32)
W2 = (_rng.standard_normal((40, 7)) * 0.3).astype(np.float32)
KERN = (_rng.standard_normal((4, 2, 3, 3)) * 0.3).astype(np.float32)


def mlp(x):
    return graphc.softmax(graphc.relu(x @ W1 + B1) @ W2, -1)


def transcendentals(x):
    return (graphc.exp(graphc.tanh(x)) + graphc.log(graphc.abs(x) + 1.0) +
            graphc.sigmoid(x) * graphc.sqrt(graphc.abs(x) + 0.5) +
            graphc.gelu(x, approximate=True) - graphc.gelu(x) * 0.5)


def layernorm(x):
    m = graphc.mean(x, -1, keepdims=True)
    v = graphc.var(x, -1, keepdims=True)
    return (x - m) * graphc.rsqrt(v + 1e-5) + graphc.max(x, -1, keepdims=True)


def conv_pool(x):
    y = graphc.relu(graphc.conv2d(x, KERN, padding=1))
    return graphc.max_pool2d(y, 2)


def attention(x):
    q, k = x @ W1, x @ W1 * 0.5
    return graphc.softmax(q @ k.T * 0.2, -1) @ x


def _np_reference(name, x):
    x = x.astype(np.float64)
    if name == "mlp":
        z = np.maximum(x @ W1 + B1, 0) @ W2
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    if name == "layernorm":
        m, v = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - m) / np.sqrt(v + 1e-5) + x.max(-1, keepdims=True)
    return None


GRAPHS = {
    "mlp": (mlp, ("B", 12)),
    "transcendentals": (transcendentals, ("B", 12)),
    "layernorm": (layernorm, ("B", 33)),
    "conv_pool": (conv_pool, ("B", 2, 8, 8)),
    "attention": (attention, ("B", 12)),
}


def _static_runner(compiled, folder) -> str:
    """run_model.c, the model's AArch64 object and the thread pool, one static executable."""
    artifact = compiled.export(str(folder / "model.gcx"))
    assert cli(["unpack", artifact, str(folder / "model")]) == 0
    exe = folder / "run_model_a64"
    zig = toolchain.zig_cc()
    cmd = [*zig, "-target", "aarch64-linux-musl", "-static", "-O2", "-DGRAPHC_STATIC",
           "-I", str(folder / "model"), RUN_MODEL, compiled.entry.path("graph.o"), THREADS,
           "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env=toolchain.tool_env(zig))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(exe)


def _run_under_qemu(exe, folder, x, n_out) -> np.ndarray:
    x.tofile(folder / "x.bin")
    proc = subprocess.run([QEMU, exe, str(folder / "model"), str(x.shape[0]),
                           str(folder / "x.bin")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return np.array(proc.stdout.split(), np.float32)[:n_out]


def test_build_is_an_aarch64_library_with_neon_code(tmp_path):
    c = graphc.compile(mlp, graphc.tensor(("B", 12)), target="aarch64")
    with open(c.entry.path("graph.so"), "rb") as f:
        head = f.read(20)
    assert head[:4] == b"\x7fELF" and head[4] == 2 and int.from_bytes(head[18:20], "little") == 183
    assert "fmla\tv" in c.asm   # NEON multiply-adds (the matmul micro-kernel)
    assert "aarch64" in repr(c)
    with pytest.raises(graphc.CompileError, match="for aarch64 and this machine is x86_64"):
        c(np.ones((2, 12), np.float32))
    path = c.export(str(tmp_path / "mlp-a64.gcx"))
    with pytest.raises(LoadError, match="built for aarch64.*this machine is x86_64"):
        graphc_runtime.load(path)
    # and from an x86 build: export(target=) builds for the other target
    host = graphc.compile(mlp, graphc.tensor(("B", 12)))
    path2 = host.export(str(tmp_path / "mlp-a64-2.gcx"), target="aarch64")
    with pytest.raises(LoadError, match="built for aarch64"):
        graphc_runtime.load(path2)


def test_unknown_targets_list_the_supported_ones():
    with pytest.raises(graphc.CompileError, match="unknown target 'arm'.*'aarch64'"):
        graphc.compile(mlp, graphc.tensor(("B", 12)), target="arm")
    with pytest.raises(graphc.CompileError, match="architecture.s base"):
        graphc.compile(mlp, graphc.tensor(("B", 12)), target="aarch64", cpu="cortex-a72")


@needs_qemu
@pytest.mark.parametrize("name", list(GRAPHS))
def test_graphs_under_qemu_match_the_x86_build(name, tmp_path):
    fn, shape = GRAPHS[name]
    spec = graphc.tensor(shape)
    a64 = graphc.compile(fn, spec, target="aarch64")
    x86 = graphc.compile(fn, spec)
    exe = _static_runner(a64, tmp_path)
    rng = np.random.default_rng(1)
    for batch in (1, 5):
        x = rng.standard_normal((batch, *shape[1:])).astype(np.float32)
        want = x86(x)
        got = _run_under_qemu(exe, tmp_path, x, want.size).reshape(want.shape)
        diff = float(np.abs(got.astype(np.float64) - want).max())
        print(f"{name} batch {batch}: max |aarch64 - x86| = {diff:.3g}")
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6 * max(1, np.abs(want).max()))
        ref = _np_reference(name, x)
        if ref is not None:
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


@needs_qemu
def test_trained_digits_model_under_qemu(tmp_path):
    pytest.importorskip("sklearn.datasets", reason="needs scikit-learn's digits")
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "web_build", os.path.join(ROOT, "examples", "web", "build.py"))
    web = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(web)
    net, x_test, y_test = web.train()   # the browser demo's model (trained with graphc)
    w1, b1, w2, b2 = [a.copy() for a in net.named_parameters().values()]

    def classify(v):
        return graphc.softmax(graphc.relu(v @ w1 + b1) @ w2 + b2, -1)
    spec = graphc.tensor(("B", 64))
    x86 = graphc.compile(classify, spec)
    exe = _static_runner(graphc.compile(classify, spec, target="aarch64"), tmp_path)
    xt = np.ascontiguousarray(x_test)
    want = x86(xt)
    got = _run_under_qemu(exe, tmp_path, xt, want.size).reshape(want.shape)
    print(f"digits: max |aarch64 - x86| = {np.abs(got - want).max():.3g}")
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    assert (got.argmax(1) == want.argmax(1)).all()
    assert (got.argmax(1) == y_test).mean() > 0.9


@needs_qemu
def test_random_graphs_under_qemu_match_numpy(tmp_path):
    """A bounded number of random programs (tests/random_programs.py), each linked and run
    under qemu-aarch64, against numpy in float64."""
    from hypothesis import HealthCheck, given, settings
    from random_programs import NumpyOps, programs, run_program
    seen = [0]

    @settings(max_examples=5, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(programs())
    def check(program):
        shapes, steps = program
        folder = tmp_path / f"p{seen[0]}"
        folder.mkdir()
        seen[0] += 1
        c = graphc.compile(lambda *xs: run_program(graphc, shapes, steps, xs),
                           *[graphc.tensor(s) for s in shapes], target="aarch64")
        exe = _static_runner(c, folder)
        rng = np.random.default_rng(seen[0])
        xs = [rng.standard_normal([3 if d == "B" else d for d in s]).astype(np.float32)
              for s in shapes]
        want = run_program(NumpyOps, shapes, steps, [x.astype(np.float64) for x in xs])
        want = np.broadcast_to(want, np.broadcast_shapes(want.shape, (3, 1)) if want.ndim else ())
        for k, x in enumerate(xs):
            x.tofile(folder / f"x{k}.bin")
        proc = subprocess.run([QEMU, exe, str(folder / "model"), "3",
                               *[str(folder / f"x{k}.bin") for k in range(len(xs))]],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        got = np.array(proc.stdout.split(), np.float32)
        np.testing.assert_allclose(got, np.asarray(want, np.float64).reshape(-1)[:got.size],
                                   rtol=1e-4, atol=1e-5)
        assert got.size == np.asarray(want).size
    check()
