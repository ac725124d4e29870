"""Fusion explains itself: every edge left between two kernels carries the rule that declined it."""
from __future__ import annotations

import numpy as np
import pytest

import graphc
import graphc.codegen.cpu
import graphc.codegen.gemm
import graphc.codegen.lower as lower
import graphc.codegen.ptx
import graphc.passes.fusion as fusion
from graphc.passes.explain import explain
from helpers import assert_matches, sample

RULES = {"cycle", "reduction boundary", "size mismatch", "cost rule", "layout", "gather", "view",
         "kernel kind", "in place", "per-element"}


def node_of(compiled, op, nth=0):
    return [n.id for n in compiled.graph.nodes if n.op == op][nth]


def test_explain_lists_each_kernel_with_its_ops_and_source_lines():
    compiled = graphc.compile(lambda x: graphc.exp(x) * 2.0, graphc.tensor((8,)))
    text = str(compiled.explain())
    assert text.splitlines()[1].startswith("k0_exp_multiply: map over (8,)")
    assert "exp" in text and "multiply" in text
    assert "test_explain.py:" in text  # the user's line, captured at trace time
    assert "not fused" not in text


def test_a_merge_that_would_make_a_cycle_is_declined_as_a_cycle(rng):
    # a feeds the matmul, whose row sums feed c: putting a and c in one kernel would make
    # that kernel both feed the matmul and wait for it
    def fn(x, w):
        a = graphc.exp(x)
        return a * graphc.sum(a @ w, 1, keepdims=True)

    compiled = graphc.compile(fn, graphc.tensor((4, 4)), graphc.tensor((4, 4)))
    a, c = node_of(compiled, "exp"), node_of(compiled, "multiply")
    (reason,) = compiled.explain().reasons(a, c)
    assert reason.startswith("cycle: the merged kernel would both feed and wait for")
    assert_matches(compiled, [sample((4, 4), "float32", rng), sample((4, 4), "float32", rng)],
                   tol=dict(rtol=1e-4, atol=1e-4))


def test_a_reduction_over_other_axes_is_declined_at_the_reduction_boundary():
    def fn(x):
        y = graphc.exp(x)
        return graphc.sum(y, 0, keepdims=True) * graphc.sum(y, 1, keepdims=True)

    compiled = graphc.compile(fn, graphc.tensor((6, 8)))
    y, second = node_of(compiled, "exp"), node_of(compiled, "sum", 1)
    (reason,) = compiled.explain().reasons(y, second)
    assert reason == f"reduction boundary: %{y}'s kernel reduces axes (0,), sum reduces (1,)"


def test_a_consumer_over_a_bigger_space_is_declined_as_a_size_mismatch():
    compiled = graphc.compile(lambda v, y: graphc.exp(v) + y, graphc.tensor((8,)),
                              graphc.tensor((4, 8)))
    assert len(compiled.kernels) == 2
    e, add = node_of(compiled, "exp"), node_of(compiled, "add")
    (reason,) = compiled.explain().reasons(e, add)
    assert reason.startswith(f"size mismatch: %{add} add computes (4, 8), which is neither "
                             f"the loop space (8,)")


def test_a_chain_longer_than_the_cap_is_split_by_the_cost_rule(monkeypatch, rng):
    monkeypatch.setattr(fusion, "MAX_KERNEL_NODES", 8)

    def chain(x):
        for _ in range(12):
            x = graphc.tanh(x) * 0.5
        return x

    compiled = graphc.compile(chain, graphc.tensor((16,)), cache=False)
    assert [len(k.nodes) for k in compiled.kernels] == [8, 8, 8]
    rules = [d.reason for k in compiled.kernels for d in k.declined]
    assert len(rules) == 2
    assert all(r == "cost rule: the kernel would hold 9 nodes, more than MAX_KERNEL_NODES (8)"
               for r in rules)
    assert_matches(compiled, [sample((16,), "float32", rng)])


def test_a_long_chain_of_softmaxes_is_cut_by_the_phase_rule(rng):
    # each softmax adds two reduction phases; one kernel for all 30 would recompute the chain
    # in every phase (O(phases^2) code: 30,000 lines of IR, ~12 s of LLVM)
    def chain(x):
        for _ in range(30):
            x = graphc.softmax(x) + x
        return x

    compiled = graphc.compile(chain, graphc.tensor((8, 64)), cache=False)
    assert [k.ops.count("max") for k in compiled.kernels] == [8, 8, 8, 6]
    cuts = [d for d in compiled.explain().declined if d.rule == "cost rule"]
    assert len(cuts) == 3 and all(compiled.graph[d.consumer].op == "max" for d in cuts)
    assert "17 reduction phases, more than MAX_ROW_PHASES (16)" in cuts[0].reason
    x = sample((8, 64), "float32", rng)
    want = x.astype(np.float64)
    for _ in range(30):
        e = np.exp(want - want.max(1, keepdims=True))
        want = e / e.sum(1, keepdims=True) + want
    np.testing.assert_allclose(compiled(x), want, rtol=1e-4, atol=1e-5)


def test_every_edge_between_kernels_has_a_known_rule():
    # a training step of a 3-layer MLP: matmuls, epilogues, transposes, reductions, in place
    def step(x, y, w1, w2, w3):
        def loss(*ws):
            h = x
            for w in ws:
                h = graphc.tanh(h @ w)
            return graphc.mean((h - y) ** 2)
        value, grads = graphc.value_and_grad(loss, argnums=(0, 1, 2))(w1, w2, w3)
        return (value, *[w - 0.1 * g for w, g in zip((w1, w2, w3), grads)])

    specs = [graphc.tensor((8, 16))] * 2 + [graphc.tensor((16, 16))] * 3
    compiled = graphc.compile(step, *specs, inplace={1: 2, 2: 3, 3: 4})
    explanation = compiled.explain()
    kernel_of = {n: k for k in compiled.kernels for n in k.nodes}
    crossing = {(fusion._producer(compiled.graph, i), n.id) for n in compiled.graph.nodes
                if n.id in kernel_of for i in n.inputs}
    crossing = {(p, c) for p, c in crossing if p is not None and kernel_of[p] is not kernel_of[c]}
    assert crossing == {(d.producer, d.consumer) for d in explanation.declined}
    assert {d.rule for d in explanation.declined} <= RULES
    assert "not fused" in str(explanation)


def test_unfused_mode_explains_every_edge_as_disabled():
    compiled = graphc.compile(lambda x: graphc.tanh(graphc.exp(x)), graphc.tensor((8,)),
                              fuse_ops=False)
    assert [d.rule for d in compiled.explain().declined] == ["disabled"]


def test_explain_is_a_function_of_the_graph_and_kernels():
    compiled = graphc.compile(lambda x: graphc.exp(x) @ x, graphc.tensor((4, 4)))
    assert str(explain(compiled.graph, compiled.kernels)) == str(compiled.explain())
    assert "kernel kind: a matmul reads its operands from memory" in str(compiled.explain())


def test_kernels_carry_the_axis_maps_that_fusion_decided():
    compiled = graphc.compile(lambda x: x - graphc.max(x, 1, keepdims=True),
                              graphc.tensor((3, 5)))
    (k,) = compiled.kernels
    mx, sub = node_of(compiled, "max"), node_of(compiled, "subtract")
    assert k.maps == {mx: (0, None), sub: (0, 1)}
    assert lower.own_maps(compiled.graph, k) is k.maps


@pytest.mark.parametrize("module", [lower, graphc.codegen.cpu, graphc.codegen.ptx,
                                    graphc.codegen.gemm], ids=lambda m: m.__name__)
def test_codegen_does_not_rebuild_fusions_groups(module):
    assert not hasattr(module, "Group") and not hasattr(module, "group_of")
    assert "node_map" not in vars(module)


def test_deep_chain_compiles_and_matches_numpy(rng):
    # 3,000 ops: past the cap, and far past Python's recursion limit if any stage recursed
    steps = 1000

    def chain(x):
        for _ in range(steps):
            x = graphc.tanh(x * 0.9 + 0.1)
        return x

    compiled = graphc.compile(chain, graphc.tensor((32,)), cache=False)
    assert len(compiled.kernels) == -(-3 * steps // fusion.MAX_KERNEL_NODES)
    x = sample((32,), "float32", rng)
    want = x.astype(np.float64)
    for _ in range(steps):
        want = np.tanh(want * 0.9 + 0.1)
    np.testing.assert_allclose(compiled(x), want, rtol=1e-4, atol=1e-5)
