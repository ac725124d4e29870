"""GPU benchmark (target="cuda"): run on a machine with an NVIDIA GPU and its driver.

    python -m benchmarks.gpu [--reps N] [--json PATH] [--quick]

Kernel times exclude host<->device copies: inputs are uploaded once (resident), then the
kernels are relaunched on the data already on the GPU (`relaunch(repeat=10)`: ten runs in a
row, one synchronize; PyTorch's matmul is timed the same way). Measured:
  - device copy bandwidth (a graphc-generated copy kernel, 256 MB in and out): the ceiling;
  - tanh-GELU(a*b + c) over 64M floats: GB/s (3 inputs read + 1 output written);
  - row softmax 4096x4096: GB/s;
  - float32 matmul 4096^3: TFLOP/s, against PyTorch's cuBLAS on the same GPU when torch with
    CUDA is installed there; in full float32 (FMA) and with tf32=True (tensor cores) against
    torch with allow_tf32;
  - the 784-512-512-10 MLP training step at batch 256 (graphc TrainStep on the GPU, state
    resident) against PyTorch eager on the same GPU.
Every graphc result is checked against NumPy (float64) before it is timed. Without a GPU the
script says why and exits with status 2. --quick runs tiny sizes (a check that the script
works, e.g. against the tests' stub driver; its timings mean nothing).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import numpy as np


def median_time(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def kernel_time(call, reps: int, batch: int) -> float:
    """Median seconds of one run of the kernels: each sample launches them `batch` times in
    a row and synchronizes once, so host overhead is amortized as in a real stream."""
    return median_time(lambda: call.relaunch(repeat=batch), reps) / batch


def resident(compiled, arrays):
    """A bound call with every input uploaded once; returns (call, first outputs)."""
    call = compiled.executable.bind(dict(enumerate(arrays)), resident=set(range(len(arrays))))
    return call, call()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script only")
    a = p.parse_args(argv)
    runs = 1 if a.quick else 10   # kernel runs per timed sample
    # elements of the map kernels, softmax rows (square), matmul size, MLP widths and batch
    n, rows, size = (1 << 12, 64, 128) if a.quick else (1 << 26, 4096, 4096)
    widths, batch = ((784, 32, 32, 10), 16) if a.quick else ((784, 512, 512, 10), 256)
    import graphc
    from graphc import nn, optim
    from graphc_runtime.cuda import Driver, available
    reason = available()
    if reason is not None:
        print(f"no GPU: {reason}", file=sys.stderr)
        sys.exit(2)
    drv = Driver.get()
    report = {"device": drv.name, "compute_capability": drv.compute_capability,
              "date": time.strftime("%Y-%m-%d"), "quick": a.quick, "results": {}}
    arch = "sm_90" if drv.compute_capability[0] >= 9 else "sm_80"
    rng = np.random.default_rng(0)
    res = report["results"]

    x = rng.standard_normal(n, dtype=np.float32)
    copy = graphc.compile(lambda v: v * 1.0, graphc.tensor((n,)), target="cuda", arch=arch)
    call, out = resident(copy, [x])
    assert np.array_equal(out, x)
    t = kernel_time(call, a.reps, runs)
    res["copy"] = {"ms": t * 1e3, "GB/s": 2 * x.nbytes / t / 1e9}

    a_, b_, c_ = (rng.standard_normal(n, dtype=np.float32) for _ in range(3))
    gelu = graphc.compile(lambda p, q, r: graphc.gelu(p * q + r, approximate=True),
                          *[graphc.tensor((n,))] * 3,
                          target="cuda", arch=arch)
    call, out = resident(gelu, [a_, b_, c_])
    v = a_.astype(np.float64) * b_ + c_
    want = 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))
    assert np.allclose(out, want, rtol=1e-5, atol=1e-6)
    t = kernel_time(call, a.reps, runs)
    res["gelu"] = {"ms": t * 1e3, "GB/s": 4 * 4 * n / t / 1e9}

    s = rng.standard_normal((rows, rows), dtype=np.float32)
    softmax = graphc.compile(lambda v: graphc.softmax(v, -1), graphc.tensor(s.shape),
                             target="cuda", arch=arch)
    call, out = resident(softmax, [s])
    e = np.exp(s - s.max(-1, keepdims=True))
    assert np.allclose(out, e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)
    t = kernel_time(call, a.reps, runs)
    res["softmax"] = {"ms": t * 1e3, "GB/s": 2 * s.nbytes / t / 1e9}

    m = rng.standard_normal((size, size), dtype=np.float32)
    flop = 2 * size ** 3
    mm = graphc.compile(lambda p, q: p @ q, graphc.tensor(m.shape), graphc.tensor(m.shape),
                        target="cuda", arch=arch)
    call, out = resident(mm, [m, m])
    ref = m[:64].astype(np.float64) @ m
    assert np.allclose(out[:64], ref, rtol=1e-3, atol=1e-2)
    t = kernel_time(call, max(5, a.reps // 3), runs)
    res["matmul"] = {"n": size, "ms": t * 1e3, "TFLOP/s": flop / t / 1e12}

    mm32 = graphc.compile(lambda p, q: p @ q, graphc.tensor(m.shape), graphc.tensor(m.shape),
                          target="cuda", arch=arch, tf32=True)
    call, out = resident(mm32, [m, m])
    assert np.abs(out[:64] - ref).max() < 1e-2 * np.abs(ref).max()   # tf32: ~1e-3 relative
    t = kernel_time(call, max(5, a.reps // 3), runs)
    res["matmul tf32"] = {"n": size, "ms": t * 1e3, "TFLOP/s": flop / t / 1e12}

    xb = rng.random((batch, widths[0]), dtype=np.float32)
    yb = rng.integers(0, widths[-1], batch).astype(np.int64)
    model = nn.Sequential(nn.Linear(widths[0], widths[1], seed=0), nn.ReLU(),
                          nn.Linear(widths[1], widths[2], seed=1), nn.ReLU(),
                          nn.Linear(widths[2], widths[3], seed=2))
    step = nn.TrainStep(model, nn.cross_entropy, optim.SGD(0.01),
                        graphc.tensor(("B", widths[0])), graphc.tensor(("B",), "int64"),
                        target="cuda", arch=arch)
    t = median_time(lambda: step(xb, yb), a.reps)
    res["mlp train step"] = {"widths": widths, "batch": batch, "ms": t * 1e3,
                             "samples/s": batch / t,
                             "note": "includes uploading the batch and reading back the loss"}

    try:
        import torch
        if torch.cuda.is_available():
            dev = torch.device("cuda")
            tm = torch.from_numpy(m).to(dev)

            def torch_mm():
                for _ in range(runs):
                    tm @ tm
                torch.cuda.synchronize()
            tt = median_time(torch_mm, max(5, a.reps // 3)) / runs
            res["torch matmul"] = {"ms": tt * 1e3, "TFLOP/s": flop / tt / 1e12,
                                   "allow_tf32": torch.backends.cuda.matmul.allow_tf32}
            was = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = True
            tt = median_time(torch_mm, max(5, a.reps // 3)) / runs
            torch.backends.cuda.matmul.allow_tf32 = was
            res["torch matmul tf32"] = {"ms": tt * 1e3, "TFLOP/s": flop / tt / 1e12}
            tmodel = torch.nn.Sequential(
                torch.nn.Linear(widths[0], widths[1]), torch.nn.ReLU(),
                torch.nn.Linear(widths[1], widths[2]), torch.nn.ReLU(),
                torch.nn.Linear(widths[2], widths[3])).to(dev)
            opt = torch.optim.SGD(tmodel.parameters(), lr=0.01)
            txb, tyb = torch.from_numpy(xb), torch.from_numpy(yb)

            def torch_step():
                opt.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(tmodel(txb.to(dev)), tyb.to(dev))
                loss.backward()
                opt.step()
                return loss.item()
            tt = median_time(torch_step, a.reps)
            res["torch mlp train step"] = {"ms": tt * 1e3, "samples/s": batch / tt}
    except ImportError:
        res["torch"] = "not installed"

    ratio = lambda x, y, key: (  # noqa: E731
        round(res[x][key] / res[y][key], 3) if x in res and y in res else None)
    report["summary"] = {
        "gelu / copy bandwidth": ratio("gelu", "copy", "GB/s"),
        "softmax / copy bandwidth": ratio("softmax", "copy", "GB/s"),
        "matmul / torch (float32)": ratio("matmul", "torch matmul", "TFLOP/s"),
        "matmul / torch (tf32)": ratio("matmul tf32", "torch matmul tf32", "TFLOP/s"),
        "mlp step / torch eager (speed)": ratio("torch mlp train step", "mlp train step", "ms"),
    }
    print(json.dumps(report, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
