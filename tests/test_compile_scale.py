"""Compile time at scale: the benchmark's quick mode runs (cold compiles, checked vs numpy)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_compile_scale_quick_mode_compiles_every_workload_correctly(tmp_path):
    out = tmp_path / "scale.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.compile_scale", "--quick",
                             "--json", str(out)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr  # each compile was checked against numpy
    results = json.loads(out.read_text())["compile_scale"]
    assert [r["workload"] for r in results] == ["chain", "mixed", "mlp"]
    assert results[0]["kernels"] == 2  # 340 ops (and 255 inline constants): past the cost rule
    assert all(0 < r["passes_s"]["fuse"] < r["compile_s"] for r in results)
    assert "workload" in result.stdout
