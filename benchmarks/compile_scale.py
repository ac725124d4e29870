"""Compile-time scaling: cold compiles of big graphs, with the time of each pass.

Workloads (float32):
  chain  an elementwise chain of ~5,000 nodes (multiply, add, tanh, ... on one (64,) vector)
  mixed  ~2,000 nodes of elementwise ops, row reductions, matmuls and broadcasts
  mlp    the training step (value_and_grad + SGD update, weights updated in place) of an
         unrolled 200-layer tanh MLP

Each compile is cold (`cache=False`, a fresh GRAPHC_CACHE_DIR) and its result is checked
against numpy. Per pass: trace, simplify, fuse, plan, codegen (LLVM IR built in Python),
llvm (parse, verify, O3, object: the rest of `graphc.compile`), link; `cpu s` is the
compile's CPU time in this process (the link runs in a child), steadier than wall time on a
shared machine.

Run from the repo root:
    python -m benchmarks.compile_scale [--quick] [--json PATH]
`--quick` shrinks every graph ~20x (a few seconds in all; tests/test_compile_scale.py runs it).
`--max-kernel-nodes N` sets fusion's cost rule (0: no cap) to measure what the cap buys.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import numpy as np

import graphc
import graphc.compiler as compiler
import graphc.passes.fusion as fusion

from benchmarks.bench_core import graphc_cache, write_json

WIDTH = 64


@dataclass
class Workload:
    name: str
    fn: Callable
    specs: list
    arrays: list
    expected: Callable  # numpy: arrays -> the outputs (list)
    inplace: dict | None = None


# ------------------------------------------------------------------ workloads

def chain_workload(n_nodes: int, rng) -> Workload:
    """x -> tanh(x * 0.9 + 0.1) - 0.01, repeated: seven nodes a step (four ops, three scalar
    constants, which kernels compute inline)."""
    steps = n_nodes // 7

    def fn(x):
        for _ in range(steps):
            x = graphc.tanh(x * 0.9 + 0.1) - 0.01
        return x

    def expected(x):
        x = x.astype(np.float64)
        for _ in range(steps):
            x = np.tanh(x * 0.9 + 0.1) - 0.01
        return [x]

    x = rng.standard_normal(WIDTH).astype(np.float32)
    return Workload("chain", fn, [graphc.tensor((WIDTH,))], [x], expected)


def mixed_workload(n_blocks: int, rng) -> Workload:
    """Blocks of ~11 nodes: a matmul with a bias, a row softmax, a broadcast residual."""
    rows = 8

    def fn(x, w, b):
        for _ in range(n_blocks):
            h = graphc.tanh(x @ w + b)
            e = graphc.exp(h - graphc.max(h, -1, keepdims=True))
            x = e / graphc.sum(e, -1, keepdims=True) + x * 0.5
        return x

    def expected(x, w, b):
        x, w, b = (a.astype(np.float64) for a in (x, w, b))
        for _ in range(n_blocks):
            h = np.tanh(x @ w + b)
            e = np.exp(h - h.max(-1, keepdims=True))
            x = e / e.sum(-1, keepdims=True) + x * 0.5
        return [x]

    arrays = [rng.standard_normal((rows, WIDTH)).astype(np.float32),
              (rng.standard_normal((WIDTH, WIDTH)) / WIDTH).astype(np.float32),
              rng.standard_normal(WIDTH).astype(np.float32)]
    specs = [graphc.tensor(a.shape) for a in arrays]
    return Workload("mixed", fn, specs, arrays, expected)


def mlp_workload(layers: int, rng) -> Workload:
    """One SGD step of a `layers`-deep tanh MLP (width 16, batch 8, MSE loss), in place."""
    width, batch, lr = 16, 8, 0.1

    def forward(params, x):
        for k in range(layers):
            x = graphc.tanh(x @ params[2 * k] + params[2 * k + 1])
        return x

    def step(x, y, *params):
        def loss(*ps):
            return graphc.mean((forward(ps, x) - y) ** 2)
        value, grads = graphc.value_and_grad(loss, argnums=tuple(range(len(params))))(*params)
        return (value, *[p - lr * g for p, g in zip(params, grads)])

    def expected(x, y, *params):
        x, y = x.astype(np.float64), y.astype(np.float64)
        ps = [p.astype(np.float64) for p in params]
        acts = [x]
        for k in range(layers):
            acts.append(np.tanh(acts[-1] @ ps[2 * k] + ps[2 * k + 1]))
        diff = acts[-1] - y
        value = np.mean(diff ** 2)
        g = 2 * diff / diff.size
        grads = [None] * len(ps)
        for k in reversed(range(layers)):
            g = g * (1 - acts[k + 1] ** 2)
            grads[2 * k] = acts[k].T @ g
            grads[2 * k + 1] = g.sum(0)
            g = g @ ps[2 * k].T
        return [value, *[p - lr * d for p, d in zip(ps, grads)]]

    params = []
    for _ in range(layers):
        params.append((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32))
        params.append((0.1 * rng.standard_normal(width)).astype(np.float32))
    arrays = [rng.standard_normal((batch, width)).astype(np.float32),
              rng.standard_normal((batch, width)).astype(np.float32), *params]
    specs = [graphc.tensor(a.shape) for a in arrays]
    inplace = {1 + k: 2 + k for k in range(len(params))}
    return Workload("mlp", step, specs, arrays, expected, inplace)


# ------------------------------------------------------------------ timing

class PassTimer:
    """Wraps the functions behind each pass while a compile runs, summing their wall time."""

    # (label, module, attribute): patched where the pipeline looks them up
    HOOKS = [("simplify", compiler, "simplify"), ("fuse", compiler, "fuse"),
             ("plan", compiler, "plan_buffers"), ("link", compiler, "link_shared")]

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, label: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - start
        return timed

    @contextlib.contextmanager
    def active(self):
        saved = []
        hooks = list(self.HOOKS)
        from graphc.codegen import cpu as codegen_cpu
        hooks.append(("codegen", codegen_cpu, "build_module"))
        for label, module, name in hooks:
            if hasattr(module, name):
                fn = getattr(module, name)
                saved.append((module, name, fn))
                setattr(module, name, self.wrap(label, fn))
        try:
            yield self
        finally:
            for module, name, fn in saved:
                setattr(module, name, fn)


def run_one(w: Workload) -> dict:
    timer = PassTimer()
    start = time.perf_counter()
    graph = graphc.trace(w.fn, *w.specs)
    timer.seconds["trace"] = time.perf_counter() - start
    with graphc_cache(fresh=True), timer.active():
        start, cpu = time.perf_counter(), time.process_time()
        compiled = graphc.compile(graph, cache=False, inplace=w.inplace)
        total, cpu = time.perf_counter() - start, time.process_time() - cpu
    _check(w, compiled)
    t = dict(timer.seconds)
    # LLVM's part (parse, verify, O3, the object) is what the compile spent outside the
    # wrapped passes (signature checks and cache writes are small next to it).
    t["llvm"] = max(0.0, total - sum(v for k, v in t.items() if k != "trace"))
    return {"workload": w.name, "nodes": len(graph.nodes),
            "nodes_simplified": len(compiled.graph.nodes), "kernels": len(compiled.kernels),
            "total_s": total + t["trace"], "compile_s": total, "compile_cpu_s": cpu,
            "passes_s": t}


def _check(w: Workload, compiled) -> None:
    arrays = [a.copy() for a in w.arrays]
    out = compiled(*arrays)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    want = w.expected(*w.arrays)
    if w.inplace:  # the updated parameters live in the input arrays
        outs = [outs[0], *[arrays[i] for i in sorted(w.inplace.values())]]
    assert len(outs) == len(want), (w.name, len(outs), len(want))
    for k, (got, exp) in enumerate(zip(outs, want)):
        np.testing.assert_allclose(np.asarray(got, np.float64), exp, rtol=2e-3, atol=2e-4,
                                   err_msg=f"{w.name}: output {k}")


PASS_ORDER = ("trace", "simplify", "fuse", "plan", "codegen", "llvm", "link")


def workloads(quick: bool, rng) -> list[Workload]:
    if quick:
        return [chain_workload(600, rng), mixed_workload(9, rng), mlp_workload(10, rng)]
    return [chain_workload(5000, rng), mixed_workload(180, rng), mlp_workload(200, rng)]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="graphs ~20x smaller")
    parser.add_argument("--only", choices=("chain", "mixed", "mlp"), action="append")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--max-kernel-nodes", type=int, default=fusion.MAX_KERNEL_NODES,
                        help="fusion's cost rule (default %(default)s; 0: no cap)")
    args = parser.parse_args(argv)
    fusion.MAX_KERNEL_NODES = args.max_kernel_nodes or sys.maxsize
    if not args.max_kernel_nodes:  # one loop body of thousands of ops: deep recursive emission
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 50_000))
    rng = np.random.default_rng(0)
    results = []
    print(f"{'workload':<8} {'nodes':>6} {'kernels':>7} {'total s':>8} {'cpu s':>6}  " +
          " ".join(f"{p:>8}" for p in PASS_ORDER))
    for w in workloads(args.quick, rng):
        if args.only and w.name not in args.only:
            continue
        r = run_one(w)
        results.append(r)
        print(f"{r['workload']:<8} {r['nodes']:>6} {r['kernels']:>7} {r['total_s']:>8.2f} "
              f"{r['compile_cpu_s']:>6.2f}  " +
              " ".join(f"{r['passes_s'].get(p, 0.0):>8.2f}" for p in PASS_ORDER), flush=True)
    write_json(args.json, {"compile_scale": results})
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
