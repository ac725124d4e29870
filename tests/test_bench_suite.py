"""The benchmark suite's roofline: bytes and FLOPs per workload, and the floor they give."""
from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)   # benchmarks/ is not an installed package

from benchmarks import suite, suite_models

CEILINGS = {"copy GB/s": 10.0, "numpy sgemm 2048^3 GFLOP/s": 100.0}


def test_cnn_flops_are_the_two_convolutions_and_the_linear_layer():
    conv1 = 2 * 64 * 32 * 32 * 32 * 3 * 3 * 3          # 2*N*O*OH*OW*C*KH*KW
    conv2 = 2 * 64 * 64 * 16 * 16 * 32 * 3 * 3
    linear = 2 * 64 * 4096 * 10
    assert suite.cost("W8")[1] == conv1 + conv2 + linear


def test_a_train_step_counts_three_forwards_less_the_first_input_gradient():
    forward, train = suite.cost("W8")[1], suite.cost("W8t")[1]
    assert train == 3 * forward - 2 * 64 * 32 * 32 * 32 * 3 * 3 * 3


def test_floor_is_the_larger_of_memory_and_compute_time():
    gelu = suite.roofline("W1", CEILINGS)
    assert gelu["bound"] == "memory"
    assert gelu["floor_s"] == pytest.approx(4 * 4 * (1 << 24) / 10e9)
    matmul = suite.roofline("W4mm2048", CEILINGS)
    assert matmul["bound"] == "compute"
    assert matmul["floor_s"] == pytest.approx(2 * 2048 ** 3 / 100e9)


def test_every_workload_has_a_cost_and_no_floor_without_ceilings():
    for key in suite.WORKLOADS:
        nbytes, flops = suite.cost(key)
        assert nbytes > 0 and flops > 0, key
    assert suite.roofline("W8", {}) is None


def test_model_workload_data_matches_the_torch_parameter_shapes():
    for key in suite_models.KEYS:
        data = suite_models.make_data(key)
        params = data[suite_models.n_inputs(key):]
        assert [p.shape for p in params] == [s for _, s in suite_models.param_shapes(key)]
