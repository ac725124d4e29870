"""The benchmark suite: every workload for every available contender, side by side.

    python -m benchmarks [--quick] [--rounds R] [--workloads W1,W6] [--contenders graphc,numpy]
                         [--json PATH] [--png PATH]

Each contender runs in its own child process (so one library's idle threads and allocator
never slow another's), with OPENBLAS_CORETYPE cleared (it pins OpenBLAS to older kernels)
and every library held to the same thread count (2 by default: --threads). Rounds
interleave the contenders (round 1: A B C..., round 2: A B C...); each round's child checks
its outputs against a float64 reference (NumPy; PyTorch for the models W8-W10, computed once
per run: suite_models.py), warms up, then times many calls. A contender without an
implementation of a workload says why (n/a). The table shows the median over all rounds,
the ratio to graphc, the derived figure and the share of the roofline floor reached. The
machine's ceilings are measured in the same run: streaming bandwidth (graphc-generated copy
and triad kernels over 64 MB arrays) and NumPy's sgemm at 2048^3.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks import suite_models
from benchmarks.suite_models import NotApplicable

WORKLOADS = {
    # key: (title, derived unit, amount of that unit per call (bytes / flops / samples))
    "W1": ("tanh-GELU(a*b + c), 16M float32", "GB/s", 4 * 4 * (1 << 24)),
    "W2": ("row softmax 4096x4096", "GB/s", 2 * 4 * 4096 * 4096),
    "W3": ("layernorm 8192x1024 (gamma, beta)", "GB/s", 2 * 4 * 8192 * 1024),
    "W4": ("dense relu(x @ W + b) 1024^3", "GFLOP/s", 2 * 1024 ** 3),
    "W4mm": ("matmul 1024^3", "GFLOP/s", 2 * 1024 ** 3),
    "W4mm2048": ("matmul 2048^3", "GFLOP/s", 2 * 2048 ** 3),
    "W5": ("MLP inference 784-1024-1024-10 + softmax, batch 512", "samples/s", 512),
    "W6": ("MLP train step 784-512-512-10, batch 256 (fwd+bwd+SGD)", "samples/s", 256),
    "W7b1": ("XOR [2,4,1] train step, batch 1", "steps/s", 1),
    "W7b4": ("XOR [2,4,1] train step, batch 4", "steps/s", 1),
    "W7b256": ("XOR [2,4,1] train step, batch 256", "steps/s", 1),
    **suite_models.WORKLOADS,
}
TRAIN_STEPS = ("W6", "W7b1", "W7b4", "W7b256") + suite_models.TRAIN
CONTENDERS = ["graphc", "graphc op-by-op", "numpy", "torch", "torch.compile", "jax.jit",
              "onnxruntime", "tinygrad"]
MLP5 = (784, 1024, 1024, 10)
MLP6 = (784, 512, 512, 10)
XOR = (2, 4, 1)
LR6, LR7 = 0.01, 0.5
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ================================================================== data and references
# Built the same way (same seeds) in every child.

def make_data(key: str):
    import numpy as np
    if key in suite_models.KEYS:
        return suite_models.make_data(key)
    rng = np.random.default_rng(0)
    f32 = np.float32
    if key == "W1":
        return [rng.standard_normal(1 << 24, dtype=f32) for _ in range(3)]
    if key == "W2":
        return [rng.standard_normal((4096, 4096), dtype=f32) * 4]
    if key == "W3":
        return [rng.standard_normal((8192, 1024), dtype=f32), rng.random(1024, dtype=f32) + 0.5,
                rng.standard_normal(1024, dtype=f32)]
    if key == "W4":
        return [rng.standard_normal((1024, 1024), dtype=f32),
                rng.standard_normal((1024, 1024), dtype=f32) / 32,
                rng.standard_normal(1024, dtype=f32)]
    if key in ("W4mm", "W4mm2048"):
        n = 1024 if key == "W4mm" else 2048
        return [rng.standard_normal((n, n), dtype=f32), rng.standard_normal((n, n), dtype=f32)]
    if key == "W5":
        return [rng.random((512, MLP5[0]), dtype=f32)] + _layers(rng, MLP5)
    if key == "W6":
        x = rng.random((256, MLP6[0]), dtype=f32)
        y = rng.integers(0, MLP6[-1], 256).astype(np.int64)
        return [x, y] + _layers(rng, MLP6)
    batch = int(key[3:])
    table = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], f32)
    x = table[2:3] if batch == 1 else np.tile(table, (batch // 4, 1))
    x = np.ascontiguousarray(x)
    y = (x[:, :1] != x[:, 1:]).astype(f32)
    return [x, y] + _layers(rng, XOR)


def _layers(rng, sizes):
    import numpy as np
    out = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        out += [(rng.standard_normal((a, b)) * math.sqrt(2.0 / a)).astype(np.float32),
                (rng.standard_normal(b) * 0.1).astype(np.float32)]
    return out


def reference(key: str, data):
    """The float64 answer: an output array, or (loss, updated layers) after one train step."""
    import numpy as np
    if key in suite_models.KEYS:
        return suite_models.load_reference(key)
    d = [a.astype(np.float64) if a.dtype.kind == "f" else a for a in data]
    if key == "W1":
        x = d[0] * d[1] + d[2]
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    if key == "W2":
        e = np.exp(d[0] - d[0].max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    if key == "W3":
        x, g, b = d
        m = x.mean(-1, keepdims=True)
        return (x - m) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * g + b
    if key == "W4":
        return np.maximum(d[0] @ d[1] + d[2], 0)
    if key in ("W4mm", "W4mm2048"):
        return d[0] @ d[1]
    if key == "W5":
        return _mlp_forward_np(d[0], d[1:], softmax=True)
    from benchmarks.bench_train import NumpyMLP
    x, y, layers = d[0], data[1], d[2:]
    pairs = list(zip(layers[::2], layers[1::2]))
    if key == "W6":
        ref = NumpyMLP(pairs, ("relu", "relu", None), "ce", LR6)
    else:
        ref = NumpyMLP(pairs, ("tanh", "sigmoid"), "mse", LR7)
    loss = ref.step(x, y)
    return loss, [a for pair in ref.arrays() for a in pair]


def _mlp_forward_np(x, layers, softmax: bool):
    import numpy as np
    n = len(layers) // 2
    for i in range(n):
        x = x @ layers[2 * i] + layers[2 * i + 1]
        if i < n - 1:
            x = np.maximum(x, 0)
    if softmax:
        e = np.exp(x - x.max(-1, keepdims=True))
        x = e / e.sum(-1, keepdims=True)
    return x


def check(key: str, got, want) -> tuple[bool, str]:
    """Outputs within float32 rounding of the float64 reference."""
    import numpy as np
    if isinstance(want, tuple):   # training step: the loss, and every updated array
        loss, arrays = got
        want_loss, want_arrays = want
        if not (math.isfinite(loss) and math.isclose(loss, want_loss, rel_tol=1e-4)):
            return False, f"loss {loss!r} vs {want_loss!r}"
        errs = [float(np.abs(a - b).max()) for a, b in zip(arrays, want_arrays)]
        ok = all(np.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(arrays, want_arrays))
        return ok, f"loss rel err {abs(loss - want_loss) / abs(want_loss):.1e}, " \
                   f"max param err {max(errs):.1e}"
    got = np.asarray(got)
    if got.shape != want.shape:
        return False, f"shape {got.shape} vs {want.shape}"
    scale = float(np.abs(want).max()) or 1.0
    err = float(np.abs(got - want).max()) / scale
    tol = 1e-4 if key.startswith("W4") or key in suite_models.KEYS else 2e-5
    return err <= tol, f"max err {err:.1e} of max |ref|"


# ================================================================== contenders
# make(key, data) -> (run, result): run() does one timed call; result() gives what check()
# compares (for train steps: one step from the initial weights, taken at the start).

def numpy_impl(key, data):
    import numpy as np
    from benchmarks.bench_core import gelu_numpy, softmax_numpy
    if key in suite_models.KEYS:
        raise NotApplicable("no hand-written NumPy convolution, attention or LSTM (backward)")
    if key == "W1":
        return lambda: gelu_numpy(*data)
    if key == "W2":
        return lambda: softmax_numpy(*data)
    if key == "W3":
        x, g, b = data

        def ln():
            m = x.mean(-1, keepdims=True)
            return (x - m) / np.sqrt(x.var(-1, keepdims=True) + np.float32(1e-5)) * g + b
        return ln
    if key == "W4":
        x, w, b = data
        return lambda: np.maximum(x @ w + b, 0)
    if key in ("W4mm", "W4mm2048"):
        return lambda: data[0] @ data[1]
    if key == "W5":
        return lambda: _mlp_forward_np(data[0], data[1:], softmax=True)
    from benchmarks.bench_train import NumpyMLP
    x, y, layers = data[0], data[1], data[2:]
    pairs = [(w.copy(), b.copy()) for w, b in zip(layers[::2], layers[1::2])]
    if key == "W6":
        m = NumpyMLP(pairs, ("relu", "relu", None), "ce", LR6)
    else:
        m = NumpyMLP(pairs, ("tanh", "sigmoid"), "mse", LR7)
    return _train_runner(lambda: m.step(x, y), lambda: [a for p in m.arrays() for a in p])


def _train_runner(step, arrays):
    """The first call is the checked step (from the initial weights)."""
    first = {}

    def run():
        loss = step()
        if not first:
            first["result"] = (loss, [a.copy() for a in arrays()])
        return loss
    run.checked = first
    return run


def graphc_impl(key, data, fused=True):
    import graphc
    from graphc import nn, optim
    if key in suite_models.KEYS:
        return suite_models.graphc_impl(key, data, fused)
    if key in ("W6", "W7b1", "W7b4", "W7b256"):
        x, y, layers = data[0], data[1], data[2:]
        sizes = MLP6 if key == "W6" else XOR
        mods = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            mods.append(nn.Linear(a, b, seed=i))
            if key == "W6" and i < 2:
                mods.append(nn.ReLU())
            elif key != "W6":
                mods.append(nn.Tanh() if i == 0 else nn.Sigmoid())
        model = nn.Sequential(*mods)
        params = model.named_parameters()
        for i in range(len(sizes) - 1):
            idx = 2 * i if key == "W6" else 2 * i
            params[f"{idx}.weight"][...] = layers[2 * i]
            params[f"{idx}.bias"][...] = layers[2 * i + 1]
        loss = nn.cross_entropy if key == "W6" else nn.mse
        lr = LR6 if key == "W6" else LR7
        step = nn.TrainStep(model, loss, optim.SGD(lr), nn.train.data_spec(x, "x"),
                            nn.train.data_spec(y, "y"), fuse_ops=fused)
        names = [f"{2 * i}.{p}" for i in range(len(sizes) - 1) for p in ("weight", "bias")]
        return _train_runner(lambda: step(x, y), lambda: [params[n] for n in names])
    fn = {"W1": lambda a, b, c: graphc.gelu(a * b + c, approximate=True),
          "W2": lambda x: graphc.softmax(x, -1),
          "W3": _graphc_layernorm,
          "W4": lambda x, w, b: graphc.relu(x @ w + b),
          "W4mm": lambda a, b: a @ b, "W4mm2048": lambda a, b: a @ b,
          "W5": _graphc_mlp}[key]
    specs = [graphc.tensor(a.shape, str(a.dtype)) for a in data]
    compiled = graphc.compile(fn, *specs, fuse_ops=fused)
    return lambda: compiled(*data)


def _graphc_layernorm(x, g, b):
    import graphc
    m = graphc.mean(x, -1, keepdims=True)
    v = graphc.var(x, -1, keepdims=True)
    return (x - m) * graphc.rsqrt(v + 1e-5) * g + b


def _graphc_mlp(x, w1, b1, w2, b2, w3, b3):
    import graphc
    h = graphc.relu(x @ w1 + b1)
    h = graphc.relu(h @ w2 + b2)
    return graphc.softmax(h @ w3 + b3, -1)


def torch_impl(key, data, compiled=False):
    import torch
    if key in suite_models.KEYS:
        return suite_models.torch_impl(key, data, compiled)
    t = [torch.from_numpy(a) for a in data]
    wrap = (lambda f: torch.compile(f)) if compiled else (lambda f: f)
    if key in ("W6", "W7b1", "W7b4", "W7b256"):
        from benchmarks.bench_train import TorchMLP
        layers = data[2:]
        pairs = list(zip(layers[::2], layers[1::2]))
        acts = ("relu", "relu", None) if key == "W6" else ("tanh", "sigmoid")
        m = TorchMLP(torch, pairs, acts, "ce" if key == "W6" else "mse",
                     LR6 if key == "W6" else LR7)
        if compiled:
            m.model = torch.compile(m.model)
        x, y = t[0], t[1]
        return _train_runner(lambda: m.step(x, y),
                             lambda: [a for p in m.arrays() for a in p])
    f = wrap(_torch_fn(key, torch))

    def run():
        with torch.no_grad():
            return f(*t).numpy()
    return run


def _torch_fn(key, torch):
    """W1-W5 as torch functions of the data arrays."""
    F = torch.nn.functional
    return {"W1": lambda a, b, c: F.gelu(a * b + c, approximate="tanh"),
            "W2": lambda x: torch.softmax(x, -1),
            "W3": lambda x, g, b: F.layer_norm(x, (x.shape[-1],), g, b, 1e-5),
            "W4": lambda x, w, b: torch.relu(x @ w + b),
            "W4mm": lambda a, b: a @ b, "W4mm2048": lambda a, b: a @ b,
            "W5": lambda x, w1, b1, w2, b2, w3, b3: torch.softmax(
                torch.relu(torch.relu(x @ w1 + b1) @ w2 + b2) @ w3 + b3, -1)}[key]


def onnxruntime_impl(key, data, threads):
    """The torch model or function exported to ONNX (opset 17, in a temporary file), run by
    an InferenceSession (all graph optimizations; intra-op threads = threads, inter-op 1)."""
    import onnxruntime as ort
    import torch
    if key in TRAIN_STEPS:
        raise NotApplicable("inference only (ONNX Runtime's training API is not used)")
    if key in suite_models.KEYS:
        module, inputs = suite_models.onnx_module(key, torch, data)
    else:
        fn = _torch_fn(key, torch)

        class Call(torch.nn.Module):
            def forward(self, *args):
                return fn(*args)
        module, inputs = Call(), data
    names = [f"x{i}" for i in range(len(inputs))]
    with tempfile.TemporaryDirectory(prefix="suite-onnx-") as folder:
        path = os.path.join(folder, f"{key}.onnx")
        torch.onnx.export(module, tuple(torch.from_numpy(a) for a in inputs), path,
                          input_names=names, output_names=["y"], opset_version=17,
                          dynamo=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feeds = dict(zip(names, inputs))
    return lambda: session.run(["y"], feeds)[0]


def tinygrad_impl(key, data):
    """tinygrad on its CPU device (kernels compiled with clang), calls captured by TinyJit;
    its kernels use NUM_CPU_THREADS threads (set to --threads)."""
    from tinygrad import Context, Tensor, TinyJit
    from tinygrad.nn import optim
    if key in suite_models.KEYS:
        return suite_models.tinygrad_impl(key, data)
    if key in TRAIN_STEPS:
        x, y = (Tensor(a).is_param_(False).realize() for a in data[:2])
        params = [Tensor(a.copy()).realize() for a in data[2:]]
        opt = optim.SGD(params, lr=LR6 if key == "W6" else LR7)

        @TinyJit
        def step(x, y):
            with Context(TRAINING=1):
                opt.zero_grad()
                h = x
                for i in range(len(params) // 2):
                    h = h @ params[2 * i] + params[2 * i + 1]
                    if key == "W6":
                        h = h.relu() if i < len(params) // 2 - 1 else h
                    else:
                        h = h.tanh() if i == 0 else h.sigmoid()
                loss = h.sparse_categorical_crossentropy(y) if key == "W6" else \
                    ((h - y) ** 2).mean()
                loss.backward()
                # realized with the update: realized after it, the loss reads the new weights
                Tensor.realize(loss, *opt.schedule_step())
                return loss
        return _train_runner(lambda: step(x, y).item(), lambda: [p.numpy() for p in params])
    fn = {"W1": lambda a, b, c: (a * b + c).gelu(),    # tinygrad's gelu is the tanh form
          "W2": lambda x: x.softmax(-1),
          "W3": lambda x, g, b: x.layernorm(eps=1e-5) * g + b,
          "W4": lambda x, w, b: (x @ w + b).relu(),
          "W4mm": lambda a, b: a @ b, "W4mm2048": lambda a, b: a @ b,
          "W5": lambda x, w1, b1, w2, b2, w3, b3: (
              ((x @ w1 + b1).relu() @ w2 + b2).relu() @ w3 + b3).softmax(-1)}[key]
    args = [Tensor(a).realize() for a in data]
    f = TinyJit(lambda *args: fn(*args).realize())
    return lambda: f(*args).numpy()


def jax_impl(key, data):
    import jax
    import jax.numpy as jnp
    import numpy as np
    if key in suite_models.KEYS:
        return suite_models.jax_impl(key, data)
    if key in ("W6", "W7b1", "W7b4", "W7b256"):
        x, y = jnp.asarray(data[0]), jnp.asarray(data[1])
        params = [jnp.asarray(a) for a in data[2:]]
        lr = LR6 if key == "W6" else LR7

        def loss_fn(ps, x, y):
            n = len(ps) // 2
            h = x
            for i in range(n):
                h = h @ ps[2 * i] + ps[2 * i + 1]
                if key == "W6":
                    h = jax.nn.relu(h) if i < n - 1 else h
                else:
                    h = jnp.tanh(h) if i == 0 else jax.nn.sigmoid(h)
            if key == "W6":
                logp = jax.nn.log_softmax(h, -1)
                return -jnp.mean(jnp.take_along_axis(logp, y[:, None], 1))
            return jnp.mean((h - y) ** 2)

        @jax.jit
        def step(ps, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(ps, x, y)
            return loss, [p - lr * g for p, g in zip(ps, grads)]
        state = {"ps": params}

        def one():
            loss, state["ps"] = step(state["ps"], x, y)
            return float(loss)
        return _train_runner(one, lambda: [np.asarray(p) for p in state["ps"]])
    args = [jnp.asarray(a) for a in data]
    fn = {"W1": lambda a, b, c: jax.nn.gelu(a * b + c, approximate=True),
          "W2": lambda x: jax.nn.softmax(x, -1),
          "W3": lambda x, g, b: (x - x.mean(-1, keepdims=True)) * jax.lax.rsqrt(
              x.var(-1, keepdims=True) + 1e-5) * g + b,
          "W4": lambda x, w, b: jax.nn.relu(x @ w + b),
          "W4mm": lambda a, b: a @ b, "W4mm2048": lambda a, b: a @ b,
          "W5": lambda x, w1, b1, w2, b2, w3, b3: jax.nn.softmax(
              jax.nn.relu(jax.nn.relu(x @ w1 + b1) @ w2 + b2) @ w3 + b3, -1)}[key]
    f = jax.jit(fn)
    return lambda: f(*args).block_until_ready()


IMPLS = {"graphc": lambda k, d, t: graphc_impl(k, d),
         "graphc op-by-op": lambda k, d, t: graphc_impl(k, d, fused=False),
         "numpy": lambda k, d, t: numpy_impl(k, d), "torch": lambda k, d, t: torch_impl(k, d),
         "torch.compile": lambda k, d, t: torch_impl(k, d, compiled=True),
         "jax.jit": lambda k, d, t: jax_impl(k, d), "onnxruntime": onnxruntime_impl,
         "tinygrad": lambda k, d, t: tinygrad_impl(k, d)}
# the modules each contender imports (ONNX Runtime's models are exported by torch)
MODULES = {"torch": ("torch",), "torch.compile": ("torch",), "jax.jit": ("jax",),
           "onnxruntime": ("onnxruntime", "onnx", "torch"), "tinygrad": ("tinygrad",)}


# ================================================================== the child process

def library_info(contender: str, threads: int) -> dict:
    """Versions, thread settings and the BLAS each contender uses."""
    import numpy as np
    info = {"numpy": np.__version__}
    try:
        from threadpoolctl import threadpool_info
        info["blas"] = [f"{p.get('internal_api')} {p.get('version')} "
                        f"({p.get('architecture')}, {p.get('num_threads')} threads)"
                        for p in threadpool_info() if p.get("user_api") == "blas"]
    except ImportError:
        info["blas"] = ["(threadpoolctl not installed)"]
    if contender.startswith("graphc"):
        import graphc
        info["graphc threads"] = graphc.get_num_threads()
    if contender.startswith("torch"):
        import torch
        info["torch"] = torch.__version__
        info["torch threads"] = torch.get_num_threads()
    if contender == "jax.jit":
        import jax
        info["jax"] = jax.__version__
        info["jax devices"] = str(jax.devices())
    if contender == "onnxruntime":
        import onnxruntime
        info["onnxruntime"] = onnxruntime.__version__
        info["intra-op threads"] = threads
    if contender == "tinygrad":
        import importlib.metadata

        import tinygrad
        from tinygrad.helpers import NUM_CPU_THREADS
        info["tinygrad"] = importlib.metadata.version("tinygrad")
        info["device"] = tinygrad.Device.DEFAULT
        info["NUM_CPU_THREADS"] = NUM_CPU_THREADS.value
    return info


def child(contender: str, keys: list[str], reps: int, budget_s: float, threads: int) -> dict:
    if contender.startswith("torch"):
        import torch
        torch.set_num_threads(threads)
    out = {"contender": contender, "info": library_info(contender, threads), "results": {}}
    for key in keys:
        data = make_data(key)
        try:
            want = reference(key, data)
        except FileNotFoundError as err:
            out["results"][key] = {"skipped": str(err)}
            continue
        t0 = time.perf_counter()
        try:
            run = IMPLS[contender](key, data, threads)
            first = run()
        except NotApplicable as why:
            out["results"][key] = {"skipped": str(why)}
            continue
        except Exception as err:  # noqa: BLE001 - a contender that cannot run is reported
            out["results"][key] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
            continue
        first_s = time.perf_counter() - t0
        got = run.checked["result"] if hasattr(run, "checked") else first
        ok, detail = check(key, got, want)
        res = {"first_call_s": first_s, "check": detail, "ok": ok}
        if ok:
            res["times_s"] = _time(run, reps, budget_s)
        out["results"][key] = res
        del data, want, run, first, got
    return out


def _time(run, reps: int, budget_s: float) -> list[float]:
    """Per-call times: warm-up, then samples of `inner` back-to-back calls (inner > 1 for
    calls of a few microseconds, so that timer overhead does not count)."""
    t0 = time.perf_counter()
    run()
    once = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(2e-3 / once))
    for _ in range(min(3, max(1, int(0.2 / (once * inner))))):   # warm-up
        for _ in range(inner):
            run()
    n = max(3, min(reps, int(budget_s / (once * inner))))
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        for _ in range(inner):
            run()
        times.append((time.perf_counter() - t0) / inner)
    return times


def ceilings(threads: int) -> dict:
    """Streaming bandwidth of graphc-generated copy and triad kernels (64 MB arrays, outputs
    reused, so page faults do not count), and NumPy's sgemm at 2048^3."""
    import numpy as np
    import graphc
    n = 1 << 24
    spec = graphc.tensor((n,))
    a, b = np.ones(n, np.float32), np.ones(n, np.float32)
    copy = graphc.compile(lambda x: x * 1.0, spec).executable.bind({}, reuse_outputs=True)
    triad = graphc.compile(lambda x, y: x + y * 3.0, spec, spec).executable.bind(
        {}, reuse_outputs=True)
    out = {}
    for name, f, args, nbytes in (("copy", copy, (a,), 8 * n), ("triad", triad, (a, b), 12 * n)):
        times = _time(lambda: f(*args), 30, 1.5)
        out[f"{name} GB/s"] = nbytes / sorted(times)[len(times) // 2] / 1e9
    m = np.ones((2048, 2048), np.float32)
    times = _time(lambda: m @ m, 10, 2.0)
    out["numpy sgemm 2048^3 GFLOP/s"] = 2 * 2048 ** 3 / sorted(times)[len(times) // 2] / 1e9
    return out


# ================================================================== the parent

def child_env(threads: int, cache_dir: str) -> dict:
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)   # pins OpenBLAS to older kernels (half the sgemm speed)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "GRAPHC_NUM_THREADS", "NUM_CPU_THREADS"):   # the last: tinygrad's CPU device
        env[var] = str(threads)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}")
    env["GRAPHC_CACHE_DIR"] = cache_dir
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_child(args: list[str], env: dict, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.suite", "--child", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout)[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def missing_reason(name: str) -> str | None:
    """Why a contender cannot run here (a module not installed, no clang for tinygrad)."""
    import importlib.util
    absent = [m for m in MODULES.get(name, ()) if importlib.util.find_spec(m) is None]
    if absent:
        return f"{', '.join(absent)} not installed"
    if name == "tinygrad" and not shutil.which(os.environ.get("CC", "clang")):
        return "tinygrad's CPU device compiles its kernels with clang, which is not installed"
    return None


def machine() -> dict:
    from benchmarks.bench_core import cpu_model
    cpu = cpu_model()
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "load average at start": load,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "OPENBLAS_CORETYPE in the environment": os.environ.get("OPENBLAS_CORETYPE")}


def cost(key: str) -> tuple[float, float]:
    """(bytes, FLOPs) of one call, for the roofline. Bytes: inputs, weights and outputs read
    or written once (4 per float; intermediates not counted). FLOPs: 2 per multiply-add, 1
    per elementwise op (tanh and exp counted as 1); a training step counts 3x its forward
    FLOPs less the first layer's input gradient (nobody computes it) and reads and writes
    each parameter once. W7's floor is far below its per-call overhead. W8-W10:
    suite_models.cost."""
    if key in suite_models.KEYS:
        return suite_models.cost(key)
    if key == "W1":
        n = 1 << 24
        return 4 * 4 * n, 10 * n
    if key == "W2":
        n = 4096 * 4096
        return 2 * 4 * n, 5 * n              # max, subtract, exp, sum, scale
    if key == "W3":
        n = 8192 * 1024
        return 2 * 4 * n + 2 * 4 * 1024, 8 * n
    if key == "W4":
        n = 1024
        return 4 * (3 * n * n + n), 2 * n ** 3 + 2 * n * n
    if key in ("W4mm", "W4mm2048"):
        n = 1024 if key == "W4mm" else 2048
        return 4 * 3 * n * n, 2 * n ** 3
    if key in ("W5", "W6"):
        sizes, batch = (MLP5, 512) if key == "W5" else (MLP6, 256)
    else:
        sizes, batch = XOR, int(key[3:])
    pairs = list(itertools.pairwise(sizes))
    n_params = sum(a * b + b for a, b in pairs)
    flops = sum(2 * batch * a * b for a, b in pairs)
    if key == "W5":
        return 4 * (batch * sizes[0] + n_params + batch * sizes[-1]), flops
    label_words = 2 if key == "W6" else sizes[-1]        # int64 labels, float targets
    first = 2 * batch * sizes[0] * sizes[1]
    return 4 * (batch * (sizes[0] + label_words) + 2 * n_params), 3 * flops - first


def roofline(key: str, ceilings: dict) -> dict | None:
    """floor = max(bytes / copy bandwidth, FLOPs / sgemm ceiling), both measured in this run."""
    copy, sgemm = ceilings.get("copy GB/s"), ceilings.get("numpy sgemm 2048^3 GFLOP/s")
    if not (copy and sgemm):
        return None
    nbytes, flops = cost(key)
    memory_s, compute_s = nbytes / (copy * 1e9), flops / (sgemm * 1e9)
    return {"bytes": nbytes, "flops": flops, "floor_s": max(memory_s, compute_s),
            "bound": "memory" if memory_s >= compute_s else "compute"}


def summarize(keys, contenders, runs, ceilings=None) -> dict:
    import statistics
    table = {}
    for key in keys:
        rows = {}
        for name in contenders:
            samples, first, checks, errors = [], [], [], []
            for r in runs:
                res = r.get(name, {}).get("results", {}).get(key)
                if res is None:
                    errors.append(r.get(name, {}).get("error", "no result"))
                    continue
                if "error" in res or "skipped" in res:
                    errors.append(res.get("error") or f"n/a: {res['skipped']}")
                    continue
                first.append(res["first_call_s"])
                checks.append((res["ok"], res["check"]))
                samples += res.get("times_s", [])
            row = {"first_call_s": first[0] if first else None,
                   "first_call_cached_s": min(first[1:]) if len(first) > 1 else None,
                   "check": checks[0][1] if checks else None,
                   "ok": bool(checks) and all(ok for ok, _ in checks)}
            if errors and not samples:
                row["error"] = errors[0][-400:]
            if samples and row["ok"]:
                row["median_s"] = statistics.median(samples)
                row["samples"] = len(samples)
            rows[name] = row
        base = rows.get("graphc", {}).get("median_s")
        title, unit, amount = WORKLOADS[key]
        roof = roofline(key, ceilings or {})
        for row in rows.values():
            if "median_s" in row:
                row["x_graphc"] = row["median_s"] / base if base else None
                row[unit] = amount / row["median_s"] / (1e9 if unit in ("GB/s", "GFLOP/s") else 1)
                if roof:
                    row["pct_of_floor"] = 100 * roof["floor_s"] / row["median_s"]
        if roof and base:
            roof["graphc_pct_of_floor"] = 100 * roof["floor_s"] / base
        table[key] = {"title": title, "unit": unit, "rows": rows, "roofline": roof}
    return table


def fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.2f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def print_report(report: dict) -> None:
    m = report["machine"]
    print(f"graphc benchmark suite, {m['date']}")
    print(f"machine: {m['cpu']}, {m['cpus']} CPUs, Python {m['python']}, {m['platform']}")
    print(f"load average at start: {m['load average at start']}; OPENBLAS_CORETYPE in the "
          f"environment: {m['OPENBLAS_CORETYPE in the environment']!r} (cleared for every "
          f"contender)")
    print(f"threads: {report['threads']} for every contender; {report['rounds']} round(s), "
          f"contenders interleaved, each in its own process; medians over all rounds")
    for name, info in report["libraries"].items():
        print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    c = report["ceilings"]
    if c:
        print("ceilings: " + ", ".join(f"{k} {v:.1f}" for k, v in c.items()))
    for key, w in report["table"].items():
        print(f"\n{key}: {w['title']}")
        roof = w.get("roofline")
        if roof:
            pct = roof.get("graphc_pct_of_floor")
            print(f"  roofline: {roof['bytes'] / 1e6:,.1f} MB, {roof['flops'] / 1e9:,.3f} GFLOP "
                  f"-> floor {fmt_time(roof['floor_s'])} ({roof['bound']}-bound); graphc at "
                  f"{f'{pct:.0f}%' if pct else '-'} of the floor")
        print(f"  {'contender':<17}{'median':>11}{'x graphc':>10}{w['unit']:>14}"
              f"{'% floor':>9}{'first call':>12}{'cached':>10}  check")
        for name, row in w["rows"].items():
            if "median_s" not in row:
                why = row.get("error") or (f"WRONG: {row['check']}" if row.get("check")
                                           else "not run")
                print(f"  {name:<17}{'-':>11}  {why.splitlines()[-1][:90]}")
                continue
            fc = row["first_call_s"]
            cc = row["first_call_cached_s"]
            pct = row.get("pct_of_floor")
            print(f"  {name:<17}{fmt_time(row['median_s']):>11}{row['x_graphc'] or 0:>10.2f}"
                  f"{row[w['unit']]:>14,.1f}{f'{pct:.0f}%' if pct else '-':>9}"
                  f"{fmt_time(fc) if fc else '-':>12}{fmt_time(cc) if cc else '-':>10}  "
                  f"{row['check']}")
    for line in report.get("bars", []):
        print(line)


def bars(report: dict) -> list[str]:
    """The issue's bars, computed from this run."""
    t, c = report["table"], report["ceilings"]
    out = ["\nbars (this run):"]

    def g(key, name="graphc"):
        return t.get(key, {}).get("rows", {}).get(name, {})
    copy = c.get("copy GB/s")
    for key in ("W1", "W2", "W3"):
        if copy and "GB/s" in g(key):
            out.append(f"  {key}: {g(key)['GB/s']:.1f} GB/s = {g(key)['GB/s'] / copy:.0%} of "
                       f"the copy bandwidth (bar: >= 80%)")
    if "median_s" in g("W1", "numpy") and "median_s" in g("W1"):
        out.append(f"  W1: {g('W1', 'numpy')['median_s'] / g('W1')['median_s']:.1f}x numpy "
                   f"(bar: >= 10x)")
    sgemm = c.get("numpy sgemm 2048^3 GFLOP/s")
    for key in ("W4mm", "W4mm2048"):
        np_row = g(key, "numpy")
        if "GFLOP/s" in g(key) and "GFLOP/s" in np_row:
            out.append(f"  {key}: {g(key)['GFLOP/s']:.0f} GFLOP/s = "
                       f"{g(key)['GFLOP/s'] / np_row['GFLOP/s']:.0%} of numpy's sgemm in this "
                       f"run (bar: >= 90%)")
    if sgemm and "GFLOP/s" in g("W4mm2048"):
        out.append(f"  W4mm2048 vs the sgemm ceiling ({sgemm:.0f} GFLOP/s): "
                   f"{g('W4mm2048')['GFLOP/s'] / sgemm:.0%}")
    if "median_s" in g("W4") and "median_s" in g("W4mm"):
        out.append(f"  W4 epilogue (bias + relu) costs "
                   f"{g('W4')['median_s'] / g('W4mm')['median_s'] - 1:+.1%} over the plain "
                   f"matmul (bar: < 5%)")
    for key in ("W5", "W6", *suite_models.KEYS):
        rows = t.get(key, {}).get("rows", {})
        if "median_s" in g(key):
            others = {n: r["median_s"] for n, r in rows.items()
                      if "median_s" in r and not n.startswith("graphc")}
            if others:
                best = min(others, key=others.get)
                bar = " (bar: faster than all)" if key in ("W5", "W6") else ""
                out.append(f"  {key}: graphc {fmt_time(g(key)['median_s'])}, fastest other "
                           f"{best} {fmt_time(others[best])}{bar}")
    if "median_s" in g("W7b4"):
        jx = g("W7b4", "jax.jit").get("median_s")
        extra = f", {jx / g('W7b4')['median_s']:.1f}x faster than jax.jit" if jx else ""
        out.append(f"  W7 batch 4: {fmt_time(g('W7b4')['median_s'])} per step{extra} "
                   f"(bar: <= 3 us, >= 5x jax.jit)")
    if g("W6").get("first_call_s") is not None:
        out.append(f"  W6 first call (trace + compile, cold cache): "
                   f"{fmt_time(g('W6')['first_call_s'])} (bar: < 1 s); from the cache: "
                   f"{fmt_time(g('W6')['first_call_cached_s'] or float('nan'))} (bar: < 50 ms)")
    return out


def write_report(report: dict, keys, names, runs, json_path: str) -> None:
    """Summarizes the rounds done so far into report and writes it as JSON."""
    report["rounds done"] = len(runs)
    report["table"] = summarize(keys, names, runs, report["ceilings"])
    report["bars"] = bars(report)
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(report, f, indent=1)


def plot(report: dict, path: str) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    keys = list(report["table"])
    names = [n for n in report["contenders"]]
    fig, ax = plt.subplots(figsize=(max(8, len(keys) * 1.1), 4.5))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        vals = [report["table"][k]["rows"].get(name, {}).get("x_graphc") or 0 for k in keys]
        ax.bar([j + i * width for j in range(len(keys))], vals, width, label=name)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))], keys)
    ax.set_ylabel("time relative to graphc (lower is faster)")
    ax.set_title(f"graphc benchmark suite, {report['machine']['cpu']}, "
                 f"{report['threads']} threads")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="one round, few repetitions")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--reps", type=int, default=None, help="timed samples per round (at most)")
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="write the report here (default bench-results/)")
    p.add_argument("--png", default=None, help="bar chart path (needs matplotlib)")
    p.add_argument("--no-ceilings", action="store_true")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        contender, keys, reps, budget = a.child[0], a.child[1].split(","), int(a.child[2]), \
            float(a.child[3])
        if contender == "ceilings":
            result = ceilings(a.threads)
        elif contender == "references":
            result = suite_models.write_references(keys, a.threads)
        else:
            result = child(contender, keys, reps, budget, a.threads)
        print(json.dumps(result))
        return result

    keys = [k for k in a.workloads.split(",") if k]
    unknown = [k for k in keys if k not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {unknown}; known: {', '.join(WORKLOADS)}")
    names = [c for c in a.contenders.split(",") if c]
    bad = [c for c in names if c not in IMPLS]
    if bad:
        p.error(f"unknown contender(s) {bad}; known: {', '.join(CONTENDERS)}")
    missing = {c: why for c in names if (why := missing_reason(c))}
    names = [c for c in names if c not in missing]
    rounds = a.rounds or (1 if a.quick else 3)
    reps = a.reps or (3 if a.quick else 40)
    budget = 0.3 if a.quick else 1.5
    cache = tempfile.mkdtemp(prefix="graphc-bench-cache-")   # round 1 compiles cold
    env = child_env(a.threads, cache)
    env["GRAPHC_BENCH_REFERENCES"] = os.path.join(cache, "references")
    os.makedirs(env["GRAPHC_BENCH_REFERENCES"])
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = a.json or os.path.join(ROOT, "bench-results", f"suite-{stamp}.json")
    report = {"machine": machine(), "threads": a.threads, "rounds": rounds, "contenders": names,
              "not installed": missing, "libraries": {}, "ceilings": {}, "references": {}}
    try:
        if not a.no_ceilings:
            c = run_child(["ceilings", "-", "0", "0", "--threads", str(a.threads)], env, 600)
            report["ceilings"] = {} if "error" in c else c
        model_keys = [k for k in keys if k in suite_models.KEYS]
        if model_keys and not missing_reason("torch"):   # float64 PyTorch, once per run
            report["references"] = run_child(["references", ",".join(model_keys), "0", "0",
                                              "--threads", str(a.threads)], env, 1200)
        runs = []
        for r in range(rounds):
            this = {}
            for name in names:
                print(f"round {r + 1}/{rounds}: {name} ...", file=sys.stderr, flush=True)
                res = run_child([name, ",".join(keys), str(reps), str(budget), "--threads",
                                 str(a.threads)], env, 3600)
                this[name] = res
                if "info" in res:
                    report["libraries"].setdefault(name, res["info"])
            runs.append(this)
            # the rounds so far, so that a long run stopped early still leaves its results
            write_report(report, keys, names, runs, json_path)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print_report(report)
    for name, why in missing.items():
        print(f"\nskipped {name}: {why}")
    print(f"\nJSON: {json_path}")
    png = plot(report, a.png or os.path.splitext(json_path)[0] + ".png")
    print(f"PNG: {png}" if png else "PNG: skipped (matplotlib not installed)")
    return report


if __name__ == "__main__":
    main()
