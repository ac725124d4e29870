"""Core benchmark: graphc fused vs graphc op-by-op vs numpy eager vs graphc.evaluate.

Workloads (float32):
  W1  tanh-GELU(a*b + c) on 1<<24 elements (elementwise chain, memory bound when fused)
  W2  row softmax on a 4096x4096 matrix (two reductions + elementwise per row)

Run from the repo root:
    python -m benchmarks.bench_core [--quick] [--reps N] [--json PATH]
    python benchmarks/bench_core.py  [same flags]
"""
from __future__ import annotations

import os

# OPENBLAS_CORETYPE pins OpenBLAS to a (possibly slower) kernel set. It must be removed
# before numpy (and so OpenBLAS) is first imported, or it has no effect.
_CLEARED_CORETYPE = os.environ.pop("OPENBLAS_CORETYPE", None)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Callable, Iterator  # noqa: E402

import numpy as np  # noqa: E402

import graphc  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE")
GELU_C = math.sqrt(2.0 / math.pi)


# ------------------------------------------------------------------ workloads

def gelu_graph(a, b, c):
    return graphc.gelu(a * b + c, approximate=True)   # W1 is the tanh form


def gelu_numpy(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    x = a * b + c
    # x*x*x, not x**3: same op count as the traced graph (np.power on float32 calls powf).
    return 0.5 * x * (1.0 + np.tanh(GELU_C * (x + 0.044715 * (x * x * x))))


def gelu_exact(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float64 oracle, so that numpy eager is checked too rather than being the yardstick."""
    x = a.astype(np.float64) * b + c
    return 0.5 * x * (1.0 + np.tanh(GELU_C * (x + 0.044715 * x**3)))


def softmax_graph(x):
    return graphc.softmax(x, axis=-1)


def softmax_numpy(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_exact(x: np.ndarray) -> np.ndarray:
    return softmax_numpy(x.astype(np.float64))


@dataclass
class Workload:
    key: str
    title: str
    fn: Callable                      # traced by graphc
    numpy_fn: Callable[..., np.ndarray]
    exact_fn: Callable[..., np.ndarray]
    inputs: list[np.ndarray]
    unavoidable_bytes: int = 0        # inputs read once + output written once

    def __post_init__(self):
        out_bytes = self.inputs[0].nbytes  # both workloads: output has the first input's shape
        self.unavoidable_bytes = sum(a.nbytes for a in self.inputs) + out_bytes


def make_workloads(n_elem: int, rows: int, cols: int, seed: int = 0) -> Iterator[Workload]:
    """One at a time, so only one workload's (large) inputs are alive at once."""
    rng = np.random.default_rng(seed)
    abc = [rng.standard_normal(n_elem, dtype=np.float32) for _ in range(3)]
    yield Workload("W1", f"W1 gelu(a*b+c), {n_elem:,} float32", gelu_graph, gelu_numpy,
                   gelu_exact, abc)
    del abc
    x = rng.standard_normal((rows, cols), dtype=np.float32) * 4.0  # spread so exp() matters
    yield Workload("W2", f"W2 softmax rows, {rows}x{cols} float32", softmax_graph,
                   softmax_numpy, softmax_exact, [x])


# ------------------------------------------------------------------ contenders

@dataclass
class Contender:
    name: str
    run: Callable[..., np.ndarray]
    note: str = ""
    times_ms: list[float] = field(default_factory=list)


def build_contenders(w: Workload) -> list[Contender]:
    specs = [graphc.tensor(a.shape, a.dtype.name) for a in w.inputs]
    t0 = time.perf_counter()
    fused = graphc.compile(w.fn, *specs)
    t1 = time.perf_counter()
    opbyop = graphc.compile(w.fn, *specs, fuse_ops=False)
    t2 = time.perf_counter()
    graph = graphc.trace(w.fn, *specs)

    def hit(c: graphc.Compiled) -> str:
        return ", cache hit" if c.cache_hit else ""

    return [
        Contender("graphc fused", fused,
                  f"{len(fused.kernels)} kernel(s), compile {t1 - t0:.2f}s{hit(fused)}"),
        Contender("graphc op-by-op", opbyop,
                  f"{len(opbyop.kernels)} kernel(s), compile {t2 - t1:.2f}s{hit(opbyop)}"),
        Contender("numpy eager", w.numpy_fn, "hand-written numpy"),
        Contender("graphc.evaluate", lambda *a: graphc.evaluate(graph, *a),
                  "reference interpreter"),
    ]


def check(w: Workload, contenders: list[Contender]) -> None:
    """Every contender must agree with the float64 oracle before any timing counts."""
    want = w.exact_fn(*w.inputs).astype(np.float32)
    for c in contenders:
        got = c.run(*w.inputs)
        ok = (isinstance(got, np.ndarray) and got.shape == want.shape
              and got.dtype == np.float32 and np.allclose(got, want, rtol=RTOL, atol=ATOL))
        if not ok:
            detail = (f"shape {getattr(got, 'shape', None)} dtype {getattr(got, 'dtype', None)}"
                      if not isinstance(got, np.ndarray) or got.shape != want.shape
                      else f"dtype {got.dtype}, max abs err "
                           f"{float(np.abs(got - want).max()):.3g}, "
                           f"{int(np.isnan(got).sum())} NaN(s) in output")
            sys.exit(f"ABORT: {w.key} {c.name!r} disagrees with numpy "
                     f"(rtol={RTOL}, atol={ATOL}): {detail}")


def time_round_robin(w: Workload, contenders: list[Contender], reps: int) -> None:
    """Each repetition runs every contender once; the order rotates so none always goes first
    (cache state, allocator state and CPU frequency drift are spread over all of them)."""
    for c in contenders:  # warm-up: page in code, grow the allocator, fill workspaces
        c.run(*w.inputs)
    for c in round_robin(contenders, reps):
        t0 = time.perf_counter_ns()
        c.run(*w.inputs)
        c.times_ms.append((time.perf_counter_ns() - t0) / 1e6)


def round_robin(contenders: list, reps: int):
    """Yields every contender once per repetition, rotating the order, with the garbage
    collector off (a collection landing in one sample would be noise, not a property of it)."""
    n = len(contenders)
    gc.collect()
    gc.disable()
    try:
        for r in range(reps):
            yield from contenders[r % n:] + contenders[:r % n]
    finally:
        gc.enable()


# ------------------------------------------------------------------ reporting

@contextlib.contextmanager
def graphc_cache(fresh: bool):
    """Points GRAPHC_CACHE_DIR at a new temporary folder (cold compiles) while `fresh`."""
    if not fresh:
        yield
        return
    old = os.environ.get("GRAPHC_CACHE_DIR")
    folder = tempfile.mkdtemp(prefix="graphc-bench-cache-")
    os.environ["GRAPHC_CACHE_DIR"] = folder
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if old is None:
            os.environ.pop("GRAPHC_CACHE_DIR", None)
        else:
            os.environ["GRAPHC_CACHE_DIR"] = old


def write_json(path: str | None, results: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
        print(f"\nwrote {path}")


def print_machine_header(title: str, info: dict) -> None:
    """Title with the date, then the machine, versions and thread settings of this run."""
    print(f"{title}, {datetime.date.today().isoformat()}")
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['platform']}")
    print(f"python {info['python']}, numpy {info['numpy']} (BLAS: {info['blas']}), "
          f"graphc {info['graphc']}")
    env = {k: (v if v is not None else "(unset)") for k, v in info["thread_env"].items()}
    if _CLEARED_CORETYPE is not None:
        env["OPENBLAS_CORETYPE"] = f"{_CLEARED_CORETYPE} (cleared before importing numpy)"
    print("thread env: " + ", ".join(f"{k}={v}" for k, v in env.items()))


def cpu_model() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def machine_info() -> dict:
    cpu = cpu_model()
    blas = "?"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # show_config warns when pyyaml is missing
            cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{cfg.get('name', '?')} {cfg.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - older numpy: no dict mode; BLAS is optional info
        pass
    env = {v: os.environ.get(v) for v in THREAD_VARS}
    return {
        "cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "numpy": np.__version__, "blas": blas,
        "graphc": graphc.__version__, "thread_env": env,
        "openblas_coretype_cleared": _CLEARED_CORETYPE,
    }


def summarize(w: Workload, contenders: list[Contender]) -> list[dict]:
    fused_median = float(np.median(contenders[0].times_ms))
    rows = []
    for c in contenders:
        med = float(np.median(c.times_ms))
        rows.append({"contender": c.name, "median_ms": med, "min_ms": float(min(c.times_ms)),
                     "ratio_to_fused": med / fused_median,
                     "gb_per_s": w.unavoidable_bytes / (med / 1e3) / 1e9,
                     "note": c.note, "times_ms": c.times_ms})
    return rows


def print_table(w: Workload, rows: list[dict], reps: int) -> None:
    print(f"\n{w.title}   (unavoidable traffic {w.unavoidable_bytes / 1e6:.1f} MB, "
          f"median of {reps})")
    print(f"{'contender':<17}{'median ms':>11}{'min ms':>10}{'x fused':>9}{'GB/s':>8}  notes")
    for r in rows:
        print(f"{r['contender']:<17}{r['median_ms']:>11.2f}{r['min_ms']:>10.2f}"
              f"{r['ratio_to_fused']:>9.2f}{r['gb_per_s']:>8.2f}  {r['note']}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="small sizes (1<<16 elements, 256x256) and 3 reps: a smoke run")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 15)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--use-cache", action="store_true",
                   help="use the normal graphc cache instead of a fresh one (a stale cache can "
                        "hold code from an older compiler; a fresh one also times compilation)")
    args = p.parse_args(argv)
    reps = args.reps or (3 if args.quick else 15)
    if reps < 1:
        p.error("--reps must be >= 1")
    n_elem, rows, cols = ((1 << 16), 256, 256) if args.quick else ((1 << 24), 4096, 4096)

    info = machine_info()
    today = datetime.date.today().isoformat()
    print_machine_header("graphc core benchmark", info)
    print(f"mode: {'quick' if args.quick else 'full'}, {reps} reps, round-robin, "
          f"check rtol={RTOL} atol={ATOL} vs float64 numpy, "
          f"{'user' if args.use_cache else 'fresh'} graphc cache")

    results = {"date": today, "machine": info, "quick": args.quick, "reps": reps,
               "rtol": RTOL, "atol": ATOL, "workloads": {}}
    with graphc_cache(fresh=not args.use_cache):
        for w in make_workloads(n_elem, rows, cols):
            contenders = build_contenders(w)
            check(w, contenders)
            time_round_robin(w, contenders, reps)
            table = summarize(w, contenders)
            print_table(w, table, reps)
            results["workloads"][w.key] = {"title": w.title,
                                           "unavoidable_bytes": w.unavoidable_bytes,
                                           "rows": table}
            del contenders, w  # free the big inputs and compiled workspaces before the next one
            gc.collect()

    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
