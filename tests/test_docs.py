"""The README's quick start and the examples run as a new user would run them."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_block(marker: str) -> str:
    """The README's one ```python block that contains `marker`."""
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = [b for b in re.findall(r"```python\n(.*?)```", f.read(), re.S) if marker in b]
    assert len(blocks) == 1, f"{len(blocks)} README python blocks contain {marker!r}"
    return blocks[0]


def test_readme_quick_start_runs():
    with open(os.path.join(ROOT, "README.md")) as f:
        code = re.findall(r"```python\n(.*?)```", f.read(), re.S)[0]   # the first one
    assert len(code.strip().splitlines()) <= 22
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "k0_matmul" in result.stdout and "softmax" not in result.stderr


def test_readme_training_example_runs(tmp_path):
    code = _readme_block("xor.npz")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=str(tmp_path), timeout=120)
    assert result.returncode == 0, result.stderr
    pred = [float(v) for v in result.stdout.strip().strip("[]").split()]
    assert [p > 0.5 for p in pred] == [False, True, True, False]
    assert (tmp_path / "xor.npz").exists()


def test_readme_pytree_training_loop_runs():
    code = _readme_block("value_and_grad")
    assert "value_and_grad" in code and "apply" in code
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split()[-1]) < 0.3


def test_readme_profile_and_view_example_runs(tmp_path):
    code = _readme_block("to_html")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=str(tmp_path), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "k0_matmul" in result.stdout and "GFLOP/s" in result.stdout
    page = (tmp_path / "mlp.html").read_text()
    assert "k0_matmul" in page and "graphc-data" in page


def test_quickstart_example_runs():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "quickstart.py")],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "kernel" in result.stdout.lower()


@pytest.mark.slow   # (benchmark smoke runs: CI runs them with -m slow)
def test_core_benchmark_smoke_runs():
    result = subprocess.run([sys.executable, "-m", "benchmarks.bench_core", "--quick"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "numpy" in result.stdout.lower() and "fused" in result.stdout.lower()


@pytest.mark.slow   # (benchmark smoke runs: CI runs them with -m slow)
def test_training_benchmark_smoke_runs():
    result = subprocess.run([sys.executable, "-m", "benchmarks.bench_train", "--quick", "--no-torch"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "graphc TrainStep" in result.stdout and "numpy" in result.stdout


def _quick_suite(tmp_path, workloads: str, contenders: str):
    """(stdout, JSON report) of `python -m benchmarks --quick` on these workloads."""
    import json
    out = tmp_path / "suite.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--workloads", workloads,
         "--contenders", contenders, "--no-ceilings", "--json", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout, json.loads(out.read_text())


@pytest.mark.slow   # (benchmark smoke runs: CI runs them with -m slow)
def test_benchmark_suite_smoke_runs(tmp_path):
    stdout, report = _quick_suite(tmp_path, "W3,W7b4", "graphc,graphc op-by-op,numpy")
    for key in ("W3", "W7b4"):
        rows = report["table"][key]["rows"]
        for name in ("graphc", "graphc op-by-op", "numpy"):
            assert rows[name]["ok"], (key, name, rows[name])      # checked against float64
            assert rows[name]["median_s"] > 0
        assert rows["graphc"]["x_graphc"] == 1.0
    assert "W7 batch 4" in stdout and "x graphc" in stdout


@pytest.mark.slow   # (benchmark smoke runs: CI runs them with -m slow)
def test_benchmark_suite_model_workloads_smoke_run(tmp_path):
    pytest.importorskip("torch")   # the float64 reference of W8-W10
    _, report = _quick_suite(tmp_path, "W8,W10t", "graphc,numpy")
    for key in ("W8", "W10t"):
        rows = report["table"][key]["rows"]
        assert rows["graphc"]["ok"] and rows["graphc"]["median_s"] > 0, rows["graphc"]
        assert rows["numpy"]["error"].startswith("n/a: ")     # skipped, with its reason
    assert "roofline" in report["table"]["W8"]
