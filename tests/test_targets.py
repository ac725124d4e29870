"""Every graph case (targets.GRAPH_CASES) on every target (targets.TARGETS): the same outputs
as numpy computed directly, where the case gives it, and as graphc.evaluate."""
from __future__ import annotations

import numpy as np
import pytest

import graphc
from graphc.passes import fusion
from helpers import TOL, aligned, assert_outputs_match
from targets import GRAPH_CASES, cases, numpy_softmax, target_params
from targets import gpu_reason  # noqa: F401 (the cuda target's skipif evaluates it here)


def _copies(arrays):
    return [a.copy() for a in arrays]   # in-place graphs write into their inputs


@pytest.mark.parametrize("target,name", [
    pytest.param(t.values[0], n, id=f"{t.values[0].name}-{n}", marks=t.marks)
    for t in target_params() for n in cases()
    if not (t.values[0].name == "cuda-stub" and "kernels" in GRAPH_CASES[n].tags)])
def test_graph_case_matches_numpy_and_the_reference(target, name, monkeypatch, rng):
    case = GRAPH_CASES[name]
    source, specs = case.source()
    compiled = target.build(source, specs, monkeypatch)
    for size in case.sizes:
        arrays = case.inputs(source, size, rng)
        reference = graphc.evaluate(compiled.graph, *_copies(arrays))
        out = compiled(*_copies(arrays))
        assert_outputs_match(out, reference, case.tol)
        if case.numpy is not None:
            assert_outputs_match(out, case.numpy(*_copies(arrays)), case.tol)


@pytest.mark.parametrize("name", cases("map"))
@pytest.mark.parametrize("target", target_params())
def test_map_cases_with_misaligned_inputs(target, name, monkeypatch, rng):
    """Buffers 4 bytes past an alignment boundary (the GPU's vector loads need 16, the CPU's
    runtime copies arrays not aligned for their dtype) compute the same."""
    case = GRAPH_CASES[name]
    source, specs = case.source()
    compiled = target.build(source, specs, monkeypatch)
    for size in case.sizes:
        arrays = [aligned(a, 4) if a.ndim else a for a in case.inputs(source, size, rng)]
        assert_outputs_match(compiled(*arrays), graphc.evaluate(compiled.graph, *arrays),
                             case.tol)


def _chain(x, steps: int):
    """3 elementwise ops a step."""
    for _ in range(steps):
        x = graphc.maximum(x * 0.999 + 0.001, -1.0)
    return x


def _numpy_chain(x, steps: int):
    for _ in range(steps):
        x = np.maximum(x * np.float32(0.999) + np.float32(0.001), np.float32(-1))
    return x


@pytest.fixture
def unlimited_kernels(monkeypatch):
    """Fusion caps a kernel's size (a cost rule); these tests lift the cap to hand the code
    generator one kernel of thousands of ops."""
    monkeypatch.setattr(fusion, "MAX_KERNEL_NODES", 1 << 30)


# (the stub driver adds only the driver path, which other tests cover: not here, for time)
@pytest.mark.parametrize("target", target_params(["cpu", "cuda-sim", "cuda"]))
def test_a_3000_op_elementwise_chain_is_one_kernel(target, monkeypatch, unlimited_kernels):
    """Fused expressions are emitted with an explicit stack, not recursion: a chain of
    thousands of elementwise ops compiles as one kernel and computes what numpy does."""
    compiled = target.build(lambda x: _chain(x, 1000), (graphc.tensor(("N",)),), monkeypatch)
    (kernel,) = compiled.kernels
    assert len(kernel.nodes) >= 3000
    x = np.linspace(-3.0, 3.0, 1001, dtype=np.float32)
    np.testing.assert_allclose(compiled(x), _numpy_chain(x, 1000), **TOL["float32"])


LONG_CHAIN_KERNELS = {   # a 900-op chain inside the other kernels that evaluate fused nodes
    "rows": (lambda x: graphc.softmax(_chain(x, 300), -1), (graphc.tensor(("B", 16)),),
             lambda x: numpy_softmax(_numpy_chain(x, 300))),
    "epilogue": (lambda a, b: _chain(a @ b, 300),
                 (graphc.tensor(("B", 8)), graphc.tensor((8, 16))),
                 lambda a, b: _numpy_chain(a @ b, 300)),
}


@pytest.mark.parametrize("kind", sorted(LONG_CHAIN_KERNELS))
@pytest.mark.parametrize("target", target_params(["cpu", "cuda-sim"]))
def test_long_chains_fuse_into_row_kernels_and_matmul_epilogues(target, kind, monkeypatch,
                                                                unlimited_kernels, rng):
    fn, specs, numpy_fn = LONG_CHAIN_KERNELS[kind]
    compiled = target.build(fn, specs, monkeypatch)
    assert len(compiled.kernels) == 1
    arrays = [rng.uniform(-2, 2, tuple(5 if not isinstance(d, int) else d for d in s.shape))
              .astype(np.float32) for s in specs]
    np.testing.assert_allclose(compiled(*arrays), numpy_fn(*arrays), rtol=1e-5, atol=1e-5)
