"""The targets the compiler builds for, as runners of graphs, and the graph cases every one of
them must compute alike. tests/test_targets.py runs each case on each target against numpy
(computed directly, where the case gives it) and against graphc.evaluate; a new backend gets
the whole suite by adding its runner to TARGETS.

Runners: "cpu" (graphc.compile, native code), "cuda-sim" (the GPU kernels built for the CPU and
run block by block: gpu_sim.py), "cuda-stub" (target="cuda" through the runtime's driver path
on the stub driver library, which runs the kernels' simulated builds: fake_cuda.py) and
"cuda" (a real GPU; marked `cuda`, skipped without one) and "wasm32" (a WebAssembly module run
by wasmtime; slow suite).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest

import graphc
from graphc import nn, optim
from graphc.ir.graph import Graph
from graphc.ops import OPS
from graphc.ops.registry import ELEMENTWISE
from graphc.trace import apply
from graphc.ops.flash import fused_attention as _flash
from helpers import sample


def gpu_reason() -> str | None:
    """None where a GPU and its driver can be used, else why not."""
    from graphc_runtime.cuda import available
    return available()


# evaluated when a test runs, in the test module's globals (which import gpu_reason)
needs_gpu = pytest.mark.skipif("gpu_reason() is not None", reason="no NVIDIA GPU and driver")


# ------------------------------------------------------------------ targets

@dataclass(frozen=True)
class Runner:
    """build(fn or Graph, specs, monkeypatch) -> a callable on numpy arrays."""
    name: str
    build: Callable
    marks: tuple = ()


def _cpu(source, specs, monkeypatch):
    return graphc.compile(source, *specs)


def _cuda_sim(source, specs, monkeypatch):
    from gpu_sim import SimulatedGpu
    if isinstance(source, Graph):
        return SimulatedGpu.from_graph(source, blocks=3, threads=4)
    return SimulatedGpu(source, *specs, blocks=3, threads=4)


def _cuda_stub(source, specs, monkeypatch):
    import fake_cuda
    fake_cuda.install(monkeypatch)
    return graphc.compile(source, *specs, target="cuda")


def _cuda(source, specs, monkeypatch):
    return graphc.compile(source, *specs, target="cuda")


def _wasm32(source, specs, monkeypatch):
    return graphc.compile(source, *specs, target="wasm32")


def _wasm_reason() -> str | None:
    import importlib.util
    from graphc.toolchain import zig_cc
    if zig_cc() is None:
        return "target='wasm32' links with the ziglang package"
    if importlib.util.find_spec("wasmtime") is None:
        return "running wasm32 builds needs wasmtime"
    return None


TARGETS = {r.name: r for r in [
    Runner("cpu", _cpu),
    Runner("cuda-sim", _cuda_sim),
    Runner("cuda-stub", _cuda_stub),
    Runner("cuda", _cuda, marks=(pytest.mark.cuda, needs_gpu)),
    # every case again as a WebAssembly module under wasmtime (slow suite: ~0.3 s a case)
    Runner("wasm32", _wasm32, marks=(pytest.mark.slow, pytest.mark.skipif(
        _wasm_reason() is not None, reason=str(_wasm_reason())))),
]}


def target_params(names=None):
    """pytest params over TARGETS (or the named ones), with each target's marks."""
    return [pytest.param(TARGETS[n], id=n, marks=TARGETS[n].marks) for n in names or TARGETS]


# ------------------------------------------------------------------ graph cases

@dataclass(frozen=True)
class Case:
    """A graph to compute on every target: a function and its specs, or a Graph built by
    `graph()`. `numpy(*arrays)`: the expected outputs computed directly (None: graphc.evaluate
    is the only reference). Symbolic dims take each of `sizes` in turn; inputs are drawn
    from `domain` (ints: `ints`, a half-open range)."""
    fn: Callable | None = None
    specs: tuple = ()
    numpy: Callable | None = None
    sizes: tuple = (5, 300)
    domain: tuple = (-3.0, 3.0)
    ints: tuple = (0, 5)
    tol: dict | None = field(default_factory=lambda: dict(rtol=1e-5, atol=1e-5))
    tags: frozenset = frozenset()
    graph: Callable | None = None

    def source(self):
        """(fn or Graph, specs) to compile."""
        return (self.graph(), ()) if self.graph is not None else (self.fn, self.specs)

    def inputs(self, source, size: int, rng) -> list[np.ndarray]:
        types = [source[i] for i in source.inputs] if isinstance(source, Graph) else self.specs
        out = []
        for t in types:
            shape = tuple(d if isinstance(d, int) else size for d in t.shape)
            if t.dtype in ("int32", "int64"):
                out.append(rng.integers(*self.ints, size=shape).astype(t.dtype))
            else:
                out.append(sample(shape, t.dtype, rng, self.domain))
        return out


def t(*shape, dtype="float32"):
    return graphc.tensor(shape, dtype)


def numpy_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _log_softmax(x):
    s = x - x.max(-1, keepdims=True)
    return s - np.log(np.exp(s).sum(-1, keepdims=True))


def _gelu(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _erf_gelu(x):
    return (0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))).astype(x.dtype)


def _model_ops(x, w, b):
    """argmax/argmin, cumsum, triu, clip, softplus, pad, layer_norm, batch_norm (graphc)."""
    return (graphc.argmax(x, -1), graphc.argmin(x, 0), graphc.cumsum(x, 1), graphc.triu(x, 1),
            graphc.clip(x, -1.0, 1.0), graphc.softplus(x),
            graphc.pad(x, ((0, 0), (2, 3)), mode="reflect"), graphc.pad(x, ((0, 0), (1, 0))),
            graphc.layer_norm(x, (9,), w, b), graphc.batch_norm(x, None, None, w, b, True))


def _numpy_model_ops(x, w, b):
    bn_mean, bn_var = x.mean(0), x.var(0)
    return (np.argmax(x, -1), np.argmin(x, 0), np.cumsum(x, 1), np.triu(x, 1),
            np.clip(x, -1, 1), np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20)))),
            np.pad(x, ((0, 0), (2, 3)), mode="reflect"), np.pad(x, ((0, 0), (1, 0))),
            (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w + b,
            (x - bn_mean) / np.sqrt(bn_var + 1e-5) * w + b)


def _scan_rnn(h, c, xs, w, u):
    """scan: a tanh RNN (matmuls against captured weights) with a pytree carry, one unread
    y, and a reversed scan; the symbolic length is the case's size."""
    def step(carry, x):
        h, c = carry
        h2 = graphc.tanh(x @ w + h @ u)
        return (h2, c + graphc.sum(h2, 1)), (h2 * 2.0, c)

    (h_n, c_n), (hs, _) = graphc.scan(step, (h, c), xs)
    back, rs = graphc.scan(lambda a, x: (a * 0.5 + x[:, 0], a), c, hs, reverse=True)
    return h_n, c_n, hs, back, rs


def _numpy_scan_rnn(h, c, xs, w, u):
    c0, hs, rs = c, [], [None] * len(xs)
    for x in xs:
        h = np.tanh(x @ w + h @ u)
        c = c + h.sum(1)
        hs.append(h * 2)
    hs = np.array(hs, np.float32).reshape((len(xs),) + h.shape)
    back = c0
    for t in reversed(range(len(xs))):
        rs[t] = back
        back = back * 0.5 + hs[t][:, 0]
    return h, c, hs, back, np.array(rs, np.float32).reshape((len(xs),) + c.shape)


def _scan_loss(h, xs, w):
    def step(h, x):
        h = graphc.tanh(x @ w + h)
        return h, graphc.sum(h * h)
    h_n, ys = graphc.scan(step, h, xs)
    return graphc.sum(h_n) + graphc.sum(ys)


def _tanh_matmul_grad(w, x):
    y = np.tanh(x @ w)
    return x.T @ (2.0 * y * (1.0 - y * y))   # d/dw sum(tanh(x w)^2)


def all_ops(dtype):
    """A graph applying every elementwise op that takes `dtype` (several outputs)."""
    names = [n for n in sorted(OPS) if OPS[n].kind == ELEMENTWISE and dtype in OPS[n].dtypes
             and n not in ("astype", "random_uniform")]   # (attrs: their own cases)

    def fn(x, y, c):
        outs = []
        for n in names:
            args = {1: [x], 2: [x, y], 3: [c, x, y]}[OPS[n].arity] if n == "where" else \
                [x, y][:OPS[n].arity]
            outs.append(apply(n, args))
        return tuple(outs)
    return fn, (t("N", dtype=dtype), t("N", dtype=dtype), t("N", dtype="bool")), names


DTYPES = ("float32", "float64", "int32", "int64", "bool")


def mlp_for_training():
    """A small MLP with dropout (a fixed stream, so every copy of the model draws alike)."""
    drop = nn.Dropout(0.1)
    drop.salt = 12345
    return nn.Sequential(nn.Linear(6, 8, seed=0), nn.ReLU(), drop, nn.Linear(8, 3, seed=1))


def _training_step_graph():
    """One SGD-with-momentum step of mlp_for_training, parameters updated in place."""
    step = nn.TrainStep(mlp_for_training(), nn.cross_entropy, optim.SGD(0.1, momentum=0.9),
                        t("B", 6), t("B", dtype="int64"))
    return step.compiled.graph


FUSED = frozenset({"fused"})
# the kernels of convolutions, gathers and attention: cuda-sim runs them; the stub driver
# adds only the driver path, which the other cases cover (keeps the suite's time down)
KERNELS = frozenset({"fused", "kernels"})


def _map(fn, specs, numpy, **options):
    """A map case, run at sizes around the GPU's 4-element vectors."""
    return Case(fn, specs, numpy, **{"sizes": (1, 4, 13, 4096), **options},
                tags=frozenset({"map"}))


GRAPH_CASES: dict[str, Case] = {
    # rows: reductions with their producers and consumers in one kernel
    "softmax": Case(lambda x: graphc.softmax(x, -1), (t("B", 33),), numpy_softmax, tags=FUSED),
    "log_softmax": Case(lambda x: graphc.log_softmax(x, -1), (t("B", 7),), _log_softmax,
                        tags=FUSED),
    "layernorm": Case(
        lambda x, g, b: (x - graphc.mean(x, -1, keepdims=True)) * graphc.rsqrt(
            graphc.var(x, -1, keepdims=True) + 1e-5) * g + b, (t("B", 20), t(20), t(20)),
        lambda x, g, b: (x - x.mean(-1, keepdims=True)) / np.sqrt(
            x.var(-1, keepdims=True) + 1e-5) * g + b, tags=FUSED),
    "column_sums": Case(lambda g, h: (graphc.sum(graphc.where(h > 0, g, 0.0), 0), g * 2.0),
                        (t("B", 13), t("B", 13)),
                        lambda g, h: (np.where(h > 0, g, 0).sum(0), g * 2), tags=FUSED),
    "gelu_exact": Case(lambda x, w, b: graphc.gelu(x @ w + b), (t("B", 9), t(9, 5), t(5)),
                       lambda x, w, b: _erf_gelu(x @ w + b), tags=FUSED),
    "model_ops": Case(_model_ops, (t("B", 9), t(9), t(9)), _numpy_model_ops, tags=FUSED),
    "reductions": Case(lambda x: (graphc.max(x, (0, 2)), graphc.sum(x), graphc.mean(x, 1)),
                       (t(3, 4, 5),), lambda x: (x.max((0, 2)), x.sum(), x.mean(1)),
                       tags=FUSED),
    "reductions64": Case(lambda x: (graphc.max(x, 1), graphc.min(x, 0), graphc.softmax(x, -1)),
                         (t(6, "N", dtype="float64"),),
                         lambda x: (x.max(1), x.min(0), numpy_softmax(x)), tags=FUSED),
    # matmul with its epilogue, transposed operands read in place, batches, integers
    "dense": Case(lambda x, w, b: graphc.gelu(x @ w + b, approximate=True),
                  (t("B", 9), t(9, 5), t(5)),
                  lambda x, w, b: _gelu(x @ w + b), tags=FUSED),
    "transposed": Case(lambda a, b: graphc.transpose(a, (1, 0)) @ graphc.transpose(b, (1, 0)),
                       (t(7, "M"), t(4, 7)), lambda a, b: a.T @ b.T, tags=FUSED),
    "batched": Case(lambda a, b: graphc.tanh(a @ b), (t(2, 3, 5, 6), t(3, 6, 4)),
                    lambda a, b: np.tanh(a @ b), tags=FUSED),
    "tiles": Case(lambda a, b, r: (a @ b + r) * 0.5, (t(70, 40), t(40, 130), t(70, 130)),
                  lambda a, b, r: (a @ b + r) * 0.5, tags=FUSED),
    "multi_tile": Case(lambda a, b, r: graphc.tanh(a @ b + r), (t(200, 20), t(20, 300), t(300)),
                       lambda a, b, r: np.tanh(a @ b + r)),
    "matmul_float64": Case(lambda a, b: a @ b, (t(130, 9, dtype="float64"),
                                                 t(9, 131, dtype="float64")), np.matmul),
    "int_matmul": Case(lambda a, b: a @ b, (t(3, 4, dtype="int32"), t(4, 2, dtype="int32")),
                       np.matmul, tags=FUSED),
    # movement
    "concat_slice": Case(lambda a, b: graphc.concatenate([a, b * 2.0], 1)[1:, 2:7],
                         (t(4, 3), t(4, 5)),
                         lambda a, b: np.concatenate([a, b * 2], 1)[1:, 2:7], tags=FUSED),
    "concat_symbolic": Case(lambda a, b: graphc.concatenate([a, b * 2.0, a], 0),
                            (t(2, "B"), t(1, "B")),   # (each input a symbolic width)
                            lambda a, b: np.concatenate([a, b * 2, a], 0), tags=FUSED),
    # values computed in the kernel: random numbers (counter-based), iota
    # windows (convolution, pooling) and indexed reads, with their gradients
    "conv_pool": Case(lambda x, w, b: graphc.max_pool2d(graphc.relu(
        graphc.conv2d(x, w, b, stride=(1, 2), padding=1)), 2, ceil_mode=True),
        (t("B", 3, 7, 8), t(4, 3, 3, 3), t(4)), tags=KERNELS, sizes=(1, 3)),
    "conv_grads": Case(graphc.grad(lambda x, w: graphc.sum(graphc.avg_pool2d(
        graphc.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1), 3, 2, 1,
        count_include_pad=False) ** 2), (0, 1)), (t("B", 2, 4, 5), t(2, 3, 3, 3)),
        tags=KERNELS, sizes=(1, 2)),
    "conv_direct": Case(graphc.grad(lambda x, w: graphc.sum(graphc.relu(graphc.conv2d(
        x, w, padding=(1, 2), dilation=(1, 2))) ** 2), (0, 1)),
        (t("B", 3, 6, 19), t(5, 3, 3, 3)), tags=KERNELS, sizes=(1, 2),
        tol=dict(rtol=2e-4, atol=2e-4)),     # float32 sums of ~100 products of size ~10
    "conv_direct_strided": Case(lambda x, w: graphc.relu(graphc.conv2d(x, w, stride=(3, 2),
                                                                     padding=1)),
                                (t("B", 3, 8, 21), t(4, 3, 3, 3)), tags=KERNELS, sizes=(1, 2),
                                tol=dict(rtol=2e-4, atol=2e-4)),
    "depthwise": Case(lambda x, w: graphc.conv2d(x, w, groups=4, padding="same", dilation=2),
                      (t("B", 4, 6, 6), t(4, 1, 3, 3)), tags=KERNELS, sizes=(1, 2)),
    "take": Case(lambda x, i: (graphc.take(x, i, axis=0), graphc.take_along_axis(
        graphc.take(x, i, axis=0), graphc.clip(i[:, None] - 1, 0, 3), 1)),
        (t(9, 4), t("B", dtype="int64")),
        lambda x, i: (x[i], np.take_along_axis(x[i], np.clip(i[:, None] - 1, 0, 3), 1)),
        ints=(0, 9), tags=KERNELS),
    "take_grad": Case(graphc.grad(lambda x, i: graphc.sum(graphc.tanh(
        graphc.take(x, i, axis=0)) ** 2)), (t(9, 4), t("B", 3, dtype="int64")),
        ints=(-9, 9), tags=KERNELS),
    "pad_grad": Case(graphc.grad(lambda x: graphc.sum(graphc.pad(x, ((0, 0), (2, 1), (1, 2)),
                                                              mode="reflect") ** 3) +
                                graphc.sum(graphc.pad(x, ((0, 0), (0, 0), (3, 1)),
                                                      mode="edge") ** 2)),
                     (t("B", 4, 5),), tags=KERNELS, sizes=(1, 4)),
    "attention": Case(lambda q, k, v, m: _flash(q, k, v, m, scale=0.5, causal=True),
                      (t("B", 2, 9, 4), t("B", 2, 9, 4), t("B", 2, 9, 6), t(9, 9)),
                      tags=KERNELS, sizes=(1, 3)),
    "attention_grad": Case(graphc.grad(lambda q, k, v: graphc.sum(_flash(
        q, k, v, scale=0.3) ** 2), (0, 1, 2)), (t("B", 5, 4), t("B", 7, 4), t("B", 7, 3)),
        tags=KERNELS, sizes=(1, 2)),
    # scan loops: the runtime steps the loop, the body's kernels run once a step
    "scan_rnn": Case(_scan_rnn, (t(2, 4), t(2), t("T", 2, 3), t(3, 4), t(4, 4)), _numpy_scan_rnn,
                     sizes=(0, 1, 6), domain=(-1.0, 1.0), tags=FUSED),
    "scan_grad": Case(graphc.grad(_scan_loss, (0, 1, 2)), (t(2, 4), t("T", 2, 3), t(3, 4)),
                      sizes=(1, 5), domain=(-1.0, 1.0), tags=KERNELS),
    "random": Case(lambda x, key: x * graphc.random_uniform(key, x.shape), (t(5, 6),
                   t(dtype="int64")), tags=FUSED),
    "one_hot": Case(lambda y: graphc.one_hot(y, 5) * 3.0, (t("B", dtype="int64"),),
                    lambda y: (np.arange(5) == y[:, None]).astype(np.float32) * 3, tags=FUSED),
    # map kernels whose innermost extent is a multiple of 4 (the GPU's vector path)
    "map_chain": _map(lambda x, y: graphc.gelu(x * y + 1.0, approximate=True),
                      (t("N"), t("N")),
                      lambda x, y: _gelu(x * y + 1)),
    "map_bias": _map(lambda x, b: graphc.relu(x + b), (t("B", 8), t(8)),
                     lambda x, b: np.maximum(x + b, 0)),
    "map_column": _map(lambda x, c: x * c, (t("B", 12), t("B", 1)), np.multiply),
    "map_transposed": _map(lambda x, y: graphc.transpose(x, (1, 0)) + y, (t(8, "B"), t("B", 8)),
                           lambda x, y: x.T + y),
    "map_bool_and_f64": _map(lambda x, y: (x > y, graphc.where(x > y, x, y * 2.0)),
                             (t("B", 4, dtype="float64"), t("B", 4, dtype="float64")),
                             lambda x, y: (x > y, np.where(x > y, x, y * 2))),
    "map_int32": _map(lambda x, y: x * y - x, (t("N", dtype="int32"), t("N", dtype="int32")),
                      lambda x, y: x * y - x, ints=(0, 9)),
    "map_random": _map(lambda x, key: x * graphc.random_uniform(key, x.shape),
                       (t(6, 8), t(dtype="int64")), None, sizes=(1,)),
    # a gradient and an in-place training step
    "grad_tanh_matmul": Case(graphc.grad(lambda w, x: graphc.sum(graphc.tanh(x @ w) ** 2), 0),
                             (t(40, 30, dtype="float64"), t(50, 40, dtype="float64")),
                             _tanh_matmul_grad, domain=(-0.5, 0.5),
                             tol=dict(rtol=1e-10, atol=1e-12)),
    "training_step": Case(graph=_training_step_graph, sizes=(10,), ints=(0, 3)),
}
for _dtype in ("float32", "float64", "int32", "bool"):   # every elementwise op, per dtype
    _fn, _specs, _ = all_ops(_dtype)
    GRAPH_CASES[f"elementwise_{_dtype}"] = Case(_fn, _specs, sizes=(1, 17, 100_003), tol=None,
                                                domain=(0.2, 3.0), ints=(0, 4))
for _dtype in DTYPES:   # casts from each dtype to every dtype
    GRAPH_CASES[f"casts_from_{_dtype}"] = Case(
        lambda x: tuple(graphc.astype(x, d) for d in DTYPES), (t("N", dtype=_dtype),),
        lambda x: tuple(x.astype(d) for d in DTYPES), sizes=(1, 300), ints=(-4, 5), tol=None,
        tags=frozenset({"casts"}))


def cases(tag=None) -> list[str]:
    return sorted(n for n, c in GRAPH_CASES.items() if tag is None or tag in c.tags)
