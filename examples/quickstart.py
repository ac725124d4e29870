"""graphc quickstart: trace a small MLP, compile it once, run it at two batch sizes.

    python examples/quickstart.py
"""
import re

import numpy as np

import graphc


def mlp(x, w1, b1, w2, b2):
    """2-layer MLP classifier: relu hidden layer, softmax over 10 classes."""
    h = graphc.relu(x @ w1 + b1)
    return graphc.softmax(h @ w2 + b2, axis=-1)


# "B" is a symbolic batch size: one compiled library serves every batch size.
specs = [graphc.tensor(("B", 784), name="x"),
         graphc.tensor((784, 128), name="w1"), graphc.tensor((128,), name="b1"),
         graphc.tensor((128, 10), name="w2"), graphc.tensor((10,), name="b2")]

graph = graphc.trace(mlp, *specs)
print("== traced graph ==")
print(graph)

model = graphc.compile(graph)  # simplify -> fuse -> LLVM -> native shared library
print(f"\ncompiled once: {len(model.kernels)} kernels in {model.library_path}")
print("\n== kernels ==")
for k in model.kernels:
    print(f"  {k.name:<40} {k.kind:<7} {' '.join(k.ops)}")

rng = np.random.default_rng(0)
weights = [rng.standard_normal(s.shape, dtype=np.float32) * 0.05 for s in specs[1:]]

print("\n== run ==")
for batch in (4, 1000):  # same `model`, no recompilation
    x = rng.standard_normal((batch, 784), dtype=np.float32)
    probs = model(x, *weights)
    expected = graphc.evaluate(graph, x, *weights)  # numpy reference interpreter
    print(f"  batch {batch:>4}: output {probs.shape}, rows sum to "
          f"{probs.sum(axis=1).mean():.6f}, max |compiled - reference| = "
          f"{np.abs(probs - expected).max():.2e}")

# A peek at the machine code: count SIMD instructions by register width.
asm = model.asm
print("\n== vectorized assembly ==")
for reg, width in (("zmm", "512-bit"), ("ymm", "256-bit"), ("xmm", "128-bit")):
    count = len(re.findall(rf"^\t[a-z].*%{reg}", asm, re.M))
    print(f"  {width} ({reg}) instructions: {count}")
fma = [ln.strip() for ln in asm.splitlines() if "vfmadd" in ln and re.search(r"%[yz]mm", ln)]
print("  e.g. fused multiply-adds on 8/16 floats at once:\n    " + "\n    ".join(fma[:4]))
