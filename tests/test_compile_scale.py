"""Compile time at scale: the benchmark's quick mode runs (cold compiles, checked vs numpy)."""
from __future__ import annotations

from benchmarks import compile_scale


def test_compile_scale_quick_mode_compiles_every_workload_correctly(capsys):
    results = compile_scale.main(["--quick"])  # each result was checked against numpy
    assert [r["workload"] for r in results] == ["chain", "mixed", "mlp"]
    chain = results[0]
    assert chain["kernels"] == 2  # 340 ops (and 255 inline constants): past the cost rule
    assert all(r["passes_s"]["fuse"] < r["compile_s"] for r in results)
    assert "workload" in capsys.readouterr().out
