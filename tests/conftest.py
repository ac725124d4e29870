import os
import tempfile

# Every test run compiles into its own cache, so cache tests start cold and runs never share.
os.environ.setdefault("GRAPHC_CACHE_DIR", tempfile.mkdtemp(prefix="graphc-test-cache-"))
# Every pass's graph is checked (ir/verify.py): a pass that breaks an invariant fails loudly.
os.environ.setdefault("GRAPHC_VERIFY", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ONNX's node suite (test_onnx_conformance.py): passed / total for the whole suite, printed at
# the end of a run that included it (tests out of scope count in the total, not as passed).
_onnx_node_passed: set[str] = set()
_onnx_node_ran: set[str] = set()


def pytest_runtest_logreport(report):
    # (BackendTest makes a _cpu and a _cuda test of each; the excluded ones are skipped)
    if "OnnxBackendNodeModelTest" in report.nodeid and report.when == "call" and \
            not report.skipped:
        _onnx_node_ran.add(report.nodeid)
        if report.passed:
            _onnx_node_passed.add(report.nodeid)


def pytest_terminal_summary(terminalreporter):
    if not _onnx_node_ran:
        return
    from test_onnx_conformance import IN_SCOPE, NODE_TESTS
    terminalreporter.write_line(
        f"ONNX backend node tests: {len(_onnx_node_passed)} passed / {len(NODE_TESTS)} total "
        f"({len(IN_SCOPE)} in scope, {len(_onnx_node_ran)} run; out of scope: "
        f"tests/onnx_scope.py)")


def pytest_ignore_collect(collection_path, config):
    """ONNX's node suite takes ~15 s just to collect (its cases are generated in memory): a
    run that deselects slow tests (the default) does not collect it at all."""
    if collection_path.name != "test_onnx_conformance.py":
        return None
    expr = config.getoption("markexpr") or ""
    if not expr:
        return None
    try:
        from _pytest.mark.expression import Expression
        selects_slow = Expression.compile(expr).evaluate(lambda name, **kw: name == "slow")
    except Exception:  # noqa: BLE001 - an expression pytest itself will report
        return None
    return True if not selects_slow else None


# Tests of 6-17 s each whose ground a faster sibling also covers in the default run; they run
# in the slow suite (CI runs it), which keeps the default run under 10 minutes on 2 cores.
SLOW_TESTS = {
    "test_random_graphs.py::test_random_float32_graphs_match_reference[cuda-sim]",
    "test_ptx.py::test_fused_graphs_and_a_training_step_assemble[sm_90]",  # sm_80 stays
    "test_ptx.py::test_simulated_training_step_matches_the_cpu_step",  # cuda-sim training_step
    "test_ptx.py::test_gpu_digits_training_matches_the_cpu[stub]",     # the XOR run stays
    "test_ptx.py::test_cuda_works_from_any_thread",
    "test_nn.py::test_digits_example_reaches_95_percent",
    "test_targets.py::test_graph_case_matches_numpy_and_the_reference[cuda-stub-training_step]",
    "test_targets.py::test_a_3000_op_elementwise_chain_is_one_kernel[cuda-sim]",  # cpu stays
    "test_targets.py::test_long_chains_fuse_into_row_kernels_and_matmul_epilogues"
    "[cuda-sim-epilogue]",
    "test_attention.py::test_transformer_encoder_layer_on_every_target[cuda-stub]",
    # 8-13 s each; cheaper siblings stay: the CPU training_step case, the elementwise PTX
    # assembly sweep, flash attention's other tests, the simulated GPU training checks
    "test_flash.py::test_forward_and_gradients_match_torch",
    "test_ptx.py::test_fused_graphs_and_a_training_step_assemble[sm_80]",
    "test_ptx.py::test_cuda_training_state_stays_on_the_device_until_sync",
    "test_targets.py::test_graph_case_matches_numpy_and_the_reference[cuda-sim-training_step]",
    "test_ptx.py::test_gpu_xor_training_converges[stub]",
    "test_targets.py::test_a_3000_op_elementwise_chain_is_one_kernel[cpu]",  # deep chains:
    # test_explain and test_autodiff keep 5,000-node ones in the default suite
    "test_attention.py::test_transformer_encoder_layer_on_every_target[cuda-sim]",
    "test_targets.py::test_graph_case_matches_numpy_and_the_reference[cuda-sim-attention_grad]",
    "test_targets.py::test_graph_case_matches_numpy_and_the_reference[cuda-sim-conv_grads]",
    "test_ptx.py::test_every_elementwise_op_assembles[int64-sm_90]",
    "test_recurrent.py::test_the_gpu_kernels_run_the_layers_as_torch_does[GRU]",  # LSTM stays
    "test_recurrent.py::test_the_gpu_kernels_run_the_layers_as_torch_does[RNN]",
    # 5-7 s each; siblings stay: the CPU model fits and the stub driver's other runs, the
    # random attention configurations against numpy, multi-head attention's gradient tests
    "test_ptx.py::test_gpu_model_fit_learns_xor[stub]",
    "test_attention.py::test_multihead_attention_random_configurations_match_torch",
    # 4-6 s each: the simulated 128-tile matmuls, the artifact tests and test_onnx_models'
    # dynamic-batch exports (two batch sizes from one compilation) stay
    "test_ptx.py::test_gpu_big_matmul_with_128_tiles_matches_the_reference[stub]",
    "test_cli.py::test_export_and_serve_example",
    "test_onnx_ops.py::test_a_torch_export_with_a_dynamic_batch_matches_onnxruntime",
    # 3-8 s each: the browser demo (trains, builds wasm32, opens Chromium) and the no-compiler
    # child process (zig builds its glibc stubs into a fresh cache); the forced-zig build
    # stays (tests/test_wasm.py is all in the slow suite: its first link builds wasi-libc)
    "test_web_demo.py::test_page_predictions_equal_the_python_runtime",
    "test_toolchain.py::test_compiles_and_runs_with_no_system_compiler",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.split("tests/")[-1] in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
