"""Training-step benchmark: graphc TrainStep vs hand-written numpy vs PyTorch eager.

Workloads (float32, one training step = forward + backward + SGD update):
  XOR  [2,4,1] MLP, tanh hidden, sigmoid out, MSE loss, SGD lr 0.5, batch 1, 4 and 256
  MLP  784-512-512-10, relu, softmax cross-entropy on int64 labels, SGD lr 0.01, batch 256

Run from the repo root:
    python -m benchmarks.bench_train [--quick] [--reps N] [--xor-reps N] [--json PATH]
    python benchmarks/bench_train.py  [same flags]
"""
from __future__ import annotations

import os

# OPENBLAS_CORETYPE pins OpenBLAS to a (possibly slower) kernel set. It must be removed
# before numpy (and so OpenBLAS) is first imported, or it has no effect. Here it matters:
# the numpy contenders spend most of their time in OpenBLAS sgemm.
_CLEARED_CORETYPE = os.environ.pop("OPENBLAS_CORETYPE", None)

import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Callable  # noqa: E402

if __package__ in (None, ""):  # `python benchmarks/bench_train.py`: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from graphc import nn, optim  # noqa: E402
from graphc.nn.train import data_spec  # noqa: E402

from benchmarks.bench_core import (graphc_cache, machine_info, print_machine_header,  # noqa: E402
                                   round_robin, write_json)

LOSS_RTOL = 1e-4
W_RTOL, W_ATOL = 1e-3, 1e-5
XOR_LR, MLP_LR = 0.5, 0.01
XOR_BATCHES = (1, 4, 256)
XOR_INNER = 20  # XOR steps per timed sample (see time_round_robin)
MLP_SIZES = (784, 512, 512, 10)

CONTENDER_NOTES = {
    "graphc TrainStep": "nn.TrainStep: forward+backward+SGD in one native call (LLVM code, "
                        "no BLAS, GRAPHC_NUM_THREADS threads), weights updated in place",
    "numpy": "hand-written numpy forward+backward+SGD, matmuls through numpy's BLAS "
             "(its default thread count)",
    "numpy 1 thread": "the same numpy code with numpy's BLAS limited to 1 thread (threadpoolctl); "
                      "big MLP only (OpenBLAS runs XOR-sized matmuls on one thread anyway)",
    "torch eager": "PyTorch eager: torch.nn.Linear layers, functional loss, loss.backward(), "
                   "torch.optim.SGD, loss.item(); torch.set_num_threads(1)",
}


# ------------------------------------------------------------------ models and data

def xor_model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, 4, seed=0), nn.Tanh(), nn.Linear(4, 1, seed=1),
                         nn.Sigmoid())


def mlp_model() -> nn.Sequential:
    a, b, c, d = MLP_SIZES
    return nn.Sequential(nn.Linear(a, b, seed=0), nn.ReLU(), nn.Linear(b, c, seed=1), nn.ReLU(),
                         nn.Linear(c, d, seed=2))


XOR_ACTS = ("tanh", "sigmoid")
MLP_ACTS = ("relu", "relu", None)  # the last layer's output is the logits


def xor_batch(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    table = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    if batch == 1:
        x = table[2:3]          # [1, 0]: a row that moves every weight, unlike [0, 0]
    elif batch == 4:
        x = table               # the truth table
    else:
        x = np.random.default_rng(seed).permutation(np.tile(table, (math.ceil(batch / 4), 1)))
        x = x[:batch]
    x = np.ascontiguousarray(x)
    y = (x[:, :1] != x[:, 1:]).astype(np.float32)
    return x, y


def mlp_batch(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((batch, MLP_SIZES[0]), dtype=np.float32)   # pixel-like values in [0, 1)
    y = rng.integers(0, MLP_SIZES[-1], batch).astype(np.int64)
    return x, y


def layer_arrays(model: nn.Module) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(weight (in, out), bias (out,)), ...] in layer order: the model's own arrays."""
    p = model.named_parameters()
    names = sorted({k.split(".")[0] for k in p}, key=int)
    return [(p[f"{n}.weight"], p[f"{n}.bias"]) for n in names]


# ------------------------------------------------------------------ numpy reference

class NumpyMLP:
    """A plain numpy training step for a stack of Linear layers, float32 throughout:
    forward, then the backward pass written out by hand, SGD applied layer by layer."""

    def __init__(self, layers, acts, loss: str, lr: float):
        self.layers = [(w.copy(), b.copy()) for w, b in layers]
        self.acts, self.loss, self.lr = acts, loss, np.float32(lr)

    def load(self, layers) -> None:
        for (w, b), (w0, b0) in zip(self.layers, layers):
            w[...] = w0
            b[...] = b0

    def arrays(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return self.layers

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        inputs, a = [], x
        for (w, b), act in zip(self.layers, self.acts):
            inputs.append(a)
            a = a @ w
            a += b
            if act == "relu":
                np.maximum(a, 0.0, out=a)
            elif act == "tanh":
                np.tanh(a, out=a)
            elif act == "sigmoid":
                np.negative(a, out=a)
                np.exp(a, out=a)
                a += 1.0
                np.reciprocal(a, out=a)
            inputs.append(a)  # activation output, used by its derivative
        out = a
        if self.loss == "mse":
            d = out - y
            loss = np.mean(d * d)
            grad = d * np.float32(2.0 / d.size)
        else:  # softmax cross-entropy, integer labels, mean over the batch
            rows = np.arange(len(y))
            shifted = out - out.max(axis=1, keepdims=True)
            e = np.exp(shifted)
            s = e.sum(axis=1, keepdims=True)
            loss = np.mean(np.log(s[:, 0]) - shifted[rows, y])
            grad = e / s
            grad[rows, y] -= 1.0
            grad *= np.float32(1.0 / len(y))
        for i in range(len(self.layers) - 1, -1, -1):
            w, b = self.layers[i]
            a_in, a_out, act = inputs[2 * i], inputs[2 * i + 1], self.acts[i]
            if act == "relu":
                grad *= a_out > 0
            elif act == "tanh":
                grad *= 1.0 - a_out * a_out
            elif act == "sigmoid":
                grad *= a_out * (1.0 - a_out)
            dw = a_in.T @ grad
            db = grad.sum(axis=0)
            if i > 0:
                grad = grad @ w.T            # before w changes
            dw *= self.lr
            w -= dw
            db *= self.lr
            b -= db
        return float(loss)


# ------------------------------------------------------------------ torch eager

def load_torch(enabled: bool):
    if not enabled:
        return None, "disabled (--no-torch)"
    try:
        import torch
    except Exception as err:  # noqa: BLE001 - torch is optional; any import failure skips it
        return None, f"not importable ({type(err).__name__}: {err})"
    torch.set_num_threads(1)
    return torch, f"torch {torch.__version__}, torch.get_num_threads()={torch.get_num_threads()}"


class TorchMLP:
    """The same model in PyTorch eager, as a PyTorch user would write it. nn.Linear stores
    weight as (out, in), so the graphc weights are copied in transposed."""

    def __init__(self, torch, layers, acts, loss: str, lr: float):
        self.torch = torch
        mods = []
        for (w, _), act in zip(layers, acts):
            mods.append(torch.nn.Linear(w.shape[0], w.shape[1]))
            if act:
                mods.append({"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh,
                             "sigmoid": torch.nn.Sigmoid}[act]())
        self.model = torch.nn.Sequential(*mods)
        self.linears = [m for m in mods if isinstance(m, torch.nn.Linear)]
        self.load(layers)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr)
        F = torch.nn.functional
        self.loss_fn = F.mse_loss if loss == "mse" else F.cross_entropy

    def load(self, layers) -> None:
        with self.torch.no_grad():
            for lin, (w, b) in zip(self.linears, layers):
                lin.weight.copy_(self.torch.from_numpy(np.ascontiguousarray(w.T)))
                lin.bias.copy_(self.torch.from_numpy(b))

    def arrays(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(lin.weight.detach().numpy().T.copy(), lin.bias.detach().numpy().copy())
                for lin in self.linears]

    def step(self, x, y) -> float:  # torch tensors
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.opt.step()
        return loss.item()


# ------------------------------------------------------------------ graphc

def build_graphc(model: nn.Module, loss, lr: float, x: np.ndarray, y: np.ndarray):
    """A TrainStep with its construction (trace + autodiff + compile) and first call timed."""
    t0 = time.perf_counter()
    step = nn.TrainStep(model, loss, optim.SGD(lr), data_spec(x, "x"), data_spec(y, "y"))
    t1 = time.perf_counter()
    snapshot = [(w.copy(), b.copy()) for w, b in layer_arrays(model)]
    step(x, y)  # the first call also sizes and allocates the runtime's workspace
    t2 = time.perf_counter()
    for (w, b), (w0, b0) in zip(layer_arrays(model), snapshot):  # undo that step
        w[...] = w0
        b[...] = b0
    return step, {"compile_s": t1 - t0, "first_call_ms": (t2 - t1) * 1e3,
                  "kernels": len(step.kernels), "cache_hit": bool(step.compiled.cache_hit)}


# ------------------------------------------------------------------ contenders

@dataclass
class Contender:
    name: str
    run: Callable[[], float]                  # one training step on the bound batch
    load: Callable[[list], None]              # set weights [(w (in,out), b), ...]
    arrays: Callable[[], list]                # current weights, same layout
    enter: Callable[[], None] = lambda: None  # called before each timed sample, not timed
    exit: Callable[[], None] = lambda: None   # called after each timed sample, not timed
    times_ms: list[float] = field(default_factory=list)


def make_contenders(gstep, gmodel, np_ref: NumpyMLP, torch_ref, blas_limit, x, y,
                    torch_y_dtype: str) -> list[Contender]:
    def g_load(layers):
        for (w, b), (w0, b0) in zip(layer_arrays(gmodel), layers):
            w[...] = w0  # in place: the compiled step holds these very arrays
            b[...] = b0

    out = [Contender("graphc TrainStep", lambda: gstep(x, y), g_load,
                     lambda: [(w.copy(), b.copy()) for w, b in layer_arrays(gmodel)]),
           Contender("numpy", lambda: np_ref.step(x, y), np_ref.load,
                     lambda: [(w.copy(), b.copy()) for w, b in np_ref.arrays()])]
    if blas_limit is not None:
        # a second, separately trained copy: the same code, BLAS held to one thread
        ref1 = NumpyMLP(np_ref.arrays(), np_ref.acts, np_ref.loss, float(np_ref.lr))
        state = {}

        def enter():
            state["limiter"] = blas_limit()

        def leave():
            state.pop("limiter").restore_original_limits()

        out.append(Contender("numpy 1 thread", lambda: ref1.step(x, y), ref1.load,
                             lambda: [(w.copy(), b.copy()) for w, b in ref1.arrays()],
                             enter, leave))
    if torch_ref is not None:
        torch = torch_ref.torch
        tx = torch.from_numpy(x)
        ty = torch.from_numpy(y if torch_y_dtype == "float32" else y.astype(np.int64))
        out.append(Contender("torch eager", lambda: torch_ref.step(tx, ty), torch_ref.load,
                             torch_ref.arrays))
    return out


def check(label: str, contenders: list[Contender], initial: list) -> None:
    """From identical weights and the same batch, one step of each contender must give the
    numpy reference's loss and updated weights (all then hold the same weights, to rounding)."""
    results = {}
    for c in contenders:
        c.load(initial)
        c.enter()
        try:
            loss = c.run()
        finally:
            c.exit()
        results[c.name] = (loss, c.arrays())
    want_loss, want_w = results["numpy"]
    if not math.isfinite(want_loss):
        sys.exit(f"ABORT: {label}: the numpy reference's loss is {want_loss}")
    for name, (loss, arrays) in results.items():
        if name == "numpy":
            continue
        if not (math.isfinite(loss) and math.isclose(loss, want_loss, rel_tol=LOSS_RTOL)):
            sys.exit(f"ABORT: {label}: {name!r} loss {loss!r} != numpy reference {want_loss!r} "
                     f"(rtol={LOSS_RTOL})")
        for i, ((w, b), (w0, b0)) in enumerate(zip(arrays, want_w)):
            for what, got, ref in (("weight", w, w0), ("bias", b, b0)):
                if got.shape != ref.shape or not np.allclose(got, ref, rtol=W_RTOL, atol=W_ATOL):
                    err = (f"shape {got.shape} vs {ref.shape}" if got.shape != ref.shape else
                           f"max abs err {float(np.abs(got - ref).max()):.3g}")
                    sys.exit(f"ABORT: {label}: {name!r} layer {i} {what} after one step differs "
                             f"from the numpy reference (rtol={W_RTOL}, atol={W_ATOL}): {err}")


def time_round_robin(contenders: list[Contender], reps: int, warmup: int, inner: int = 1) -> None:
    """Each repetition runs every contender once; the order rotates so none always goes first
    (cache state, allocator state and CPU frequency drift are spread over all of them).
    A sample is `inner` back-to-back steps timed together, divided by `inner`: for steps of a
    few microseconds, a single step timed right after another contender's step measures mostly
    the caches that contender left behind (a torch step before an XOR step adds about 15 us)."""
    for _ in range(warmup):
        for c in contenders:
            c.enter()
            for _ in range(inner):
                c.run()
            c.exit()
    for c in round_robin(contenders, reps):
        c.enter()
        t0 = time.perf_counter_ns()
        for _ in range(inner):
            c.run()
        c.times_ms.append((time.perf_counter_ns() - t0) / 1e6 / inner)
        c.exit()


def summarize(contenders: list[Contender], batch: int, flops: float | None) -> list[dict]:
    base = float(np.median(contenders[0].times_ms))
    rows = []
    for c in contenders:
        med = float(np.median(c.times_ms))
        rows.append({"contender": c.name, "median_ms": med, "min_ms": float(min(c.times_ms)),
                     "ratio_to_graphc": med / base, "samples_per_s": batch / (med / 1e3),
                     "gflop_per_s": None if flops is None else flops / (med / 1e3) / 1e9,
                     "times_ms": c.times_ms})
    return rows


# ------------------------------------------------------------------ environment

def blas_info() -> tuple[list[dict], Callable | None]:
    """numpy's BLAS as threadpoolctl sees it, and a callable limiting it to one thread."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return [], None
    ctl = ThreadpoolController()
    blas = ctl.select(user_api="blas")
    numpy_libs = [lib for lib in blas.info()
                  if "numpy" in lib.get("filepath", "") or "openblas" in lib.get("prefix", "")]
    if not numpy_libs:
        return blas.info(), None
    return numpy_libs, lambda: blas.limit(limits=1)


def print_header(info: dict, blas_libs: list[dict], torch_line: str, mode: str,
                 names: list[str]) -> None:
    print_machine_header("graphc training-step benchmark", info)
    if blas_libs:
        for lib in blas_libs:
            print(f"numpy BLAS threads: {lib.get('internal_api')} {lib.get('version')}, "
                  f"{lib.get('num_threads')} thread(s) by default, kernels "
                  f"{lib.get('architecture', '?')}, {lib.get('threading_layer', '?')}")
    else:
        print("numpy BLAS threads: unknown (threadpoolctl not importable; "
              "'numpy 1 thread' skipped)")
    import graphc
    print(f"graphc threads: {graphc.get_num_threads()} (GRAPHC_NUM_THREADS; small kernels run "
          f"on the calling thread)")
    load = os.getloadavg()
    busy = ("  (above 0.5: other work may be running; 2-thread BLAS suffers most from that)"
            if load[0] > 0.5 else "")
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}{busy}")
    print(f"torch: {torch_line}")
    print(mode)
    print("contenders:")
    for name in names:
        print(f"  {name:<17} {CONTENDER_NOTES[name]}")


# ------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="3 reps each and batch 32 for the big MLP: a smoke run")
    p.add_argument("--reps", type=int, default=None,
                   help="timed repetitions for the big MLP (default 51)")
    p.add_argument("--xor-reps", type=int, default=None,
                   help="timed repetitions per XOR batch size (default 301), each "
                        f"{XOR_INNER} back-to-back steps")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    p.add_argument("--use-cache", action="store_true",
                   help="use the normal graphc cache instead of a fresh one (a fresh one also "
                        "times compilation cold)")
    args = p.parse_args(argv)
    reps = args.reps or (3 if args.quick else 51)
    xor_reps = args.xor_reps or (3 if args.quick else 301)
    if reps < 1 or xor_reps < 1:
        p.error("--reps and --xor-reps must be >= 1")
    mlp_b = 32 if args.quick else 256
    warmup = 1 if args.quick else 3


    torch, torch_line = load_torch(not args.no_torch)
    info = machine_info()
    info["openblas_coretype_cleared"] = _CLEARED_CORETYPE  # bench_core saw it already gone
    blas_libs, blas_limit = blas_info()
    mode = (f"mode: {'quick' if args.quick else 'full'}, XOR {xor_reps} reps per batch "
            f"(each {XOR_INNER} back-to-back steps), "
            f"MLP {reps} reps, {warmup} warm-up round(s), round-robin, median; check vs numpy "
            f"reference: loss rtol={LOSS_RTOL}, weights rtol={W_RTOL} atol={W_ATOL}; "
            f"{'user' if args.use_cache else 'fresh'} graphc cache")
    names = (["graphc TrainStep", "numpy"] + (["numpy 1 thread"] if blas_limit else [])
             + (["torch eager"] if torch else []))
    print_header(info, blas_libs, torch_line, mode, names)

    results = {"date": datetime.date.today().isoformat(), "machine": info,
               "load_average_at_start": list(os.getloadavg()),
               "numpy_blas": blas_libs, "torch": torch_line, "quick": args.quick,
               "reps": reps, "xor_reps": xor_reps, "xor_steps_per_sample": XOR_INNER,
               "contenders": {n: CONTENDER_NOTES[n] for n in names}}
    with graphc_cache(fresh=not args.use_cache):
        # ---------------- XOR: one compiled step serves every batch size (B is symbolic)
        gmodel = xor_model()
        x4, y4 = xor_batch(4)
        gstep, xor_compile = build_graphc(gmodel, nn.mse, XOR_LR, x4, y4)
        initial = [(w.copy(), b.copy()) for w, b in layer_arrays(gmodel)]
        np_ref = NumpyMLP(initial, XOR_ACTS, "mse", XOR_LR)
        t_ref = TorchMLP(torch, initial, XOR_ACTS, "mse", XOR_LR) if torch else None
        results["xor"] = {"compile": xor_compile, "batches": {}}
        rows_by_batch = {}
        for batch in XOR_BATCHES:
            x, y = xor_batch(batch)
            # XOR's matmuls are far below any BLAS threading threshold: no 1-thread variant
            cs = make_contenders(gstep, gmodel, np_ref, t_ref, None, x, y, "float32")
            check(f"XOR batch {batch}", cs, initial)
            time_round_robin(cs, xor_reps, warmup, XOR_INNER)
            rows_by_batch[batch] = summarize(cs, batch, None)
            results["xor"]["batches"][str(batch)] = rows_by_batch[batch]

        print(f"\nXOR [2,4,1] MLP training step (tanh hidden, sigmoid out, MSE, SGD lr {XOR_LR}),"
              f" float32, median of {xor_reps} x {XOR_INNER} steps")
        print(f"graphc compile: {xor_compile['compile_s']:.2f} s (TrainStep construction, "
              f"{xor_compile['kernels']} kernels, one compile for all batch sizes"
              f"{', cache hit' if xor_compile['cache_hit'] else ''}), "
              f"first call {xor_compile['first_call_ms']:.2f} ms")
        print(f"{'batch':>5}  {'contender':<17}{'median us':>11}{'min us':>10}{'x graphc':>10}"
              f"{'samples/s':>14}")
        for batch, rows in rows_by_batch.items():
            for r in rows:
                print(f"{batch:>5}  {r['contender']:<17}{r['median_ms'] * 1e3:>11.1f}"
                      f"{r['min_ms'] * 1e3:>10.1f}{r['ratio_to_graphc']:>10.2f}"
                      f"{r['samples_per_s']:>14,.0f}")
        del gstep, gmodel, np_ref, t_ref, cs
        gc.collect()

        # ---------------- MLP 784-512-512-10
        gmodel = mlp_model()
        x, y = mlp_batch(mlp_b)
        gstep, mlp_compile = build_graphc(gmodel, nn.cross_entropy, MLP_LR, x, y)
        initial = [(w.copy(), b.copy()) for w, b in layer_arrays(gmodel)]
        np_ref = NumpyMLP(initial, MLP_ACTS, "ce", MLP_LR)
        t_ref = TorchMLP(torch, initial, MLP_ACTS, "ce", MLP_LR) if torch else None
        cs = make_contenders(gstep, gmodel, np_ref, t_ref, blas_limit, x, y, "int64")
        check(f"MLP batch {mlp_b}", cs, initial)
        time_round_robin(cs, reps, warmup)
        pairs = list(zip(MLP_SIZES[:-1], MLP_SIZES[1:]))
        flops = 3 * sum(2.0 * mlp_b * i * o for i, o in pairs)
        needed = flops - 2.0 * mlp_b * MLP_SIZES[0] * MLP_SIZES[1]
        rows = summarize(cs, mlp_b, flops)
        results["mlp"] = {"batch": mlp_b, "compile": mlp_compile, "flops_per_step": flops,
                          "rows": rows}

        sizes = "-".join(map(str, MLP_SIZES))
        print(f"\nMLP {sizes} training step (relu, softmax cross-entropy on int64 labels, "
              f"SGD lr {MLP_LR}), batch {mlp_b}, float32, median of {reps}")
        print(f"graphc compile: {mlp_compile['compile_s']:.2f} s (TrainStep construction, "
              f"{mlp_compile['kernels']} kernels{', cache hit' if mlp_compile['cache_hit'] else ''}"
              f"), first call {mlp_compile['first_call_ms']:.1f} ms")
        print(f"GFLOP/s counts 3 matmuls per layer, 2*B*in*out each: {flops / 1e9:.3f} GFLOP per "
              f"step (no contender computes the input gradient of layer 1, so the work done is "
              f"{needed / 1e9:.3f} GFLOP, {needed / flops:.0%} of that)")
        print(f"{'contender':<17}{'median ms':>11}{'min ms':>10}{'x graphc':>10}{'samples/s':>12}"
              f"{'GFLOP/s':>10}")
        for r in rows:
            print(f"{r['contender']:<17}{r['median_ms']:>11.2f}{r['min_ms']:>10.2f}"
                  f"{r['ratio_to_graphc']:>10.2f}{r['samples_per_s']:>12,.0f}"
                  f"{r['gflop_per_s']:>10.1f}")
        del cs

    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
