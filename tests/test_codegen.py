"""Generated code: vectorized hot loops, readable names, one entry point, disk cache."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import numpy as np

import graphc
from helpers import assert_matches, sample


def kernel_asm(compiled, name: str) -> str:
    asm = compiled.asm
    start = asm.index(f"{name}:")
    return asm[start:asm.index(".Lfunc_end", start)]


def vector_registers(text: str) -> int:
    """Packed single-precision instructions on 256/512-bit registers."""
    return len(re.findall(r"v\w+ps\s+.*%[yz]mm", text))


def test_elementwise_loop_is_simd_vectorized():
    compiled = graphc.compile(lambda a, b: graphc.tanh(a * b + 1.0), graphc.tensor(("N",)),
                              graphc.tensor(("N",)))
    (kernel,) = compiled.kernels
    body = kernel_asm(compiled, kernel.name)
    assert vector_registers(body) > 0, "no packed single-precision ops on ymm/zmm registers"
    assert "call" not in body, "math must be inline arithmetic, not library calls"
    assert re.search(r"<\d+ x float>", compiled.llvm_ir), "the optimized IR has no vector type"


def test_row_reductions_are_vectorized():
    compiled = graphc.compile(lambda x: graphc.softmax(x), graphc.tensor(("B", 512)))
    body = kernel_asm(compiled, compiled.kernels[0].name)
    assert re.search(r"vmaxps\s+.*%[yz]mm", body), "max over a row is not vectorized"
    assert re.search(r"vaddps\s+.*%[yz]mm", body), "sum over a row is not vectorized"


def test_pooling_window_max_is_vectorized_along_the_output_row(rng):
    # the 2x2 window is written out in full, so the loop over output columns vectorizes
    compiled = graphc.compile(lambda x: graphc.max_pool2d(x, 2), graphc.tensor(("B", 4, 32, 32)))
    body = kernel_asm(compiled, compiled.kernels[0].name)
    assert re.search(r"vmaxps\s+.*%[yz]mm", body), "the window max is scalar"
    x = rng.standard_normal((3, 4, 32, 32)).astype(np.float32)
    x[0, 0, 0, 1] = np.nan
    want = x.reshape(3, 4, 16, 2, 16, 2).max(axis=(3, 5))
    np.testing.assert_array_equal(compiled(x), want)


def test_matmul_micro_kernel_is_vector_fmas_without_spills():
    compiled = graphc.compile(lambda a, b: a @ b, graphc.tensor(("M", "K")), graphc.tensor(("K", "N")))
    name = re.search(r"graphc_micro_float32_\w+", compiled.llvm_ir).group(0)
    body = kernel_asm(compiled, name)
    fmas = re.findall(r"vfmadd\w*ps\s+.*%[xyz]mm", body)
    assert len(fmas) >= 8, body
    # accumulators stay in registers: no vector stores to the stack inside the k loop
    assert not re.search(r"vmovup[sd]\s+%[yz]mm\d+, -?\d*\(%rsp\)", body), body


def test_odd_sizes_around_the_vector_width(rng):
    compiled = graphc.compile(lambda a, b: (graphc.exp(a) - b, graphc.sum(a * b, -1)),
                              graphc.tensor(("B", "N")), graphc.tensor(("B", "N")))
    for n in (1, 2, 7, 15, 16, 17, 31, 33, 63, 65, 1023, 1025):
        arrays = [sample((3, n), "float32", rng), sample((3, n), "float32", rng)]
        assert_matches(compiled, arrays, tol=dict(rtol=1e-5, atol=1e-5))


def test_kernels_are_named_after_their_ops_and_entry_point_is_single():
    compiled = graphc.compile(lambda x: graphc.softmax(graphc.exp(x)), graphc.tensor((4, 8)))
    (kernel,) = compiled.kernels
    assert kernel.name.startswith("k0_") and "exp" in kernel.name and "sum" in kernel.name
    ir = compiled.llvm_ir_unoptimized
    assert ir.count("define i32 @\"graphc_run\"") == 1 or ir.count("define i32 @graphc_run") == 1
    assert f"call void @\"{kernel.name}\"" in ir or f"call void @{kernel.name}" in ir


def test_graph_listing_is_readable():
    graph = graphc.trace(lambda x, y: graphc.exp(x) + y, graphc.tensor(("B", 3)),
                         graphc.tensor((3,), "float32", name="bias"))
    text = str(graph)
    assert "graph lambda(x: f32[B, 3], bias: f32[3])" in text
    assert re.search(r"%2 = exp %0\s+: f32\[B, 3\]", text)
    assert re.search(r"%3 = add %2, %1\s+: f32\[B, 3\]", text)
    assert "return %3" in text


def test_symbolic_dims_bind_at_call_time(rng):
    compiled = graphc.compile(lambda x, w: graphc.softmax(x @ w), graphc.tensor(("B", 5)),
                              graphc.tensor((5, 3)))
    w = sample((5, 3), "float32", rng)
    for batch in (1, 4, 100):
        out = assert_matches(compiled, [sample((batch, 5), "float32", rng), w])
        assert out.shape == (batch, 3)


def test_compiled_code_is_cached_on_disk_across_processes(tmp_path):
    script = textwrap.dedent("""
        import numpy as np, graphc
        f = graphc.compile(lambda x: graphc.tanh(x) * 3.0 + 0.25, graphc.tensor(("B", 5)))
        out = f(np.ones((2, 5), np.float32))
        assert np.allclose(out, np.tanh(1.0) * 3 + 0.25)
        print("HIT" if f.cache_hit else "MISS")
    """)
    env = dict(os.environ, GRAPHC_CACHE_DIR=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
            for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    assert [r.stdout.strip() for r in runs] == ["MISS", "HIT"]
    entries = [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 2 and "support" in entries  # one graph, plus the thread pool object


def test_different_graphs_get_different_cache_entries():
    a = graphc.compile(lambda x: x * 2.0, graphc.tensor((3,)))
    b = graphc.compile(lambda x: x * 3.0, graphc.tensor((3,)))
    c = graphc.compile(lambda x: x * 2.0, graphc.tensor((3,)))
    assert a.key != b.key and a.key == c.key and c.cache_hit
    np.testing.assert_array_equal(b(np.ones(3, np.float32)), np.full(3, 3.0, np.float32))


def test_cache_false_builds_fresh_code(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    first = graphc.compile(lambda x: x * 2.0, graphc.tensor((8,)))
    with open(os.path.join(first.cache_dir, "module.s"), "w") as f:
        f.write("STALE\n")
    fresh = graphc.compile(lambda x: x * 2.0, graphc.tensor((8,)), cache=False)
    assert not fresh.cache_hit and fresh.asm != "STALE\n" and "graphc_run" in fresh.asm
    np.testing.assert_array_equal(fresh(np.ones(8, np.float32)), np.full(8, 2.0, np.float32))


def test_softmax_computes_exp_once_per_element(rng):
    # the sum pass leaves exp(x - max) in the output; the last pass scales it in place
    compiled = graphc.compile(lambda x: graphc.softmax(x, -1), graphc.tensor(("B", "N")))
    (kernel,) = compiled.kernels
    ir_text = compiled.llvm_ir_unoptimized
    body = ir_text[ir_text.index(f'@"{kernel.name}"(') if f'@"{kernel.name}"(' in ir_text
                   else ir_text.index(f"@{kernel.name}("):]
    body = body[:body.index("\n}")]
    assert len(re.findall(r'call float @"?llvm\.rint', body)) == 1, "exp is emitted twice"
    assert body.count("fdiv") == 1, "one division per row, not per element"
    for shape in [(3, 1), (5, 17), (2, 1000)]:
        assert_matches(compiled, [sample(shape, "float32", rng, (-30, 30))],
                       tol=dict(rtol=3e-6, atol=1e-7))


def test_repeated_layers_share_one_kernel_function(rng):
    """Kernels with the same code (a repeated layer) are emitted once; each call still gets
    its own buffers, and layers of another width keep their own code."""
    def stack(x, w, v):
        for _ in range(6):
            x = graphc.tanh(x @ w + 0.5)
        return graphc.tanh(x[:, :4] @ v + 0.5)

    f = graphc.compile(stack, graphc.tensor(("B", 8)), graphc.tensor((8, 8)),
                       graphc.tensor((4, 4)))
    defined = re.findall(r"define .*@\"?(k\d+_[\w.]+?)\"?\(", f.llvm_ir_unoptimized)
    kernels = [name for name in defined if not name.endswith(".task")]
    assert len(f.kernels) >= 7 and len(kernels) < len(f.kernels)
    x = rng.standard_normal((5, 8)).astype(np.float32)
    w = (rng.standard_normal((8, 8)) / 3).astype(np.float32)
    v = rng.standard_normal((4, 4)).astype(np.float32)
    want = x.astype(np.float64)
    for _ in range(6):
        want = np.tanh(want @ w + 0.5)
    want = np.tanh(want[:, :4] @ v + 0.5)
    np.testing.assert_allclose(f(x, w, v), want, rtol=1e-5, atol=1e-5)
