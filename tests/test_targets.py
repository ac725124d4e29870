"""Every graph case (targets.GRAPH_CASES) on every target (targets.TARGETS): the same outputs
as numpy computed directly, where the case gives it, and as graphc.evaluate."""
from __future__ import annotations

import numpy as np
import pytest

import graphc
from graphc.passes import fusion
from helpers import TOL, aligned, assert_outputs_match
from targets import GRAPH_CASES, cases, gpu_reason, target_params  # noqa: F401 (gpu_reason:
#                                                                    the cuda target's skipif)


def _copies(arrays):
    return [a.copy() for a in arrays]   # in-place graphs write into their inputs


@pytest.mark.parametrize("name", cases())
@pytest.mark.parametrize("target", target_params())
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


CHAIN_OPS = {}   # ops in the long chain; 3,000 where not listed


@pytest.mark.parametrize("target", target_params())
def test_a_3000_op_elementwise_chain_is_one_kernel(target, monkeypatch, rng):
    """Fused expressions are emitted with an explicit stack, not recursion: a chain of
    thousands of elementwise ops compiles as one kernel and computes what numpy does."""
    ops = CHAIN_OPS.get(target.name, 3000)
    # Fusion checks the whole group again at each merge (quadratic in the chain's length);
    # every merge of this chain is valid, which the real check confirms once, below.
    valid = fusion.valid
    monkeypatch.setattr(fusion, "valid", lambda graph, group: True)

    def chain(x):
        for _ in range(ops // 3):
            x = graphc.maximum(x * 0.999 + 0.001, -1.0)
        return x
    compiled = target.build(chain, (graphc.tensor(("N",)),), monkeypatch)
    (kernel,) = compiled.kernels
    assert len(kernel.nodes) >= ops
    assert valid(compiled.graph, fusion.Group("map", kernel.space, (), set(kernel.nodes)))
    x = np.linspace(-3.0, 3.0, 1001, dtype=np.float32)
    expected = x.copy()
    for _ in range(ops // 3):
        expected = np.maximum(expected * np.float32(0.999) + np.float32(0.001), np.float32(-1))
    np.testing.assert_allclose(compiled(x), expected, **TOL["float32"])
