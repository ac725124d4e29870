"""split_module (graphc/backends/split.py): a big module built as two parts on two threads
links into the same library, each function defined once, kernels not exported."""
from __future__ import annotations

import ctypes
import re

import llvmlite.binding as llvm
import numpy as np
import pytest

import graphc.backends.cpu as cpu_backend
from graphc import nn, optim
from graphc.backends.split import split_module


def _training_step(rng, cache: bool = True):
    model = nn.Sequential(nn.Linear(64, 48, seed=0), nn.ReLU(), nn.Linear(48, 32, seed=1),
                          nn.ReLU(), nn.Linear(32, 10, seed=2))
    x = rng.standard_normal((37, 64)).astype(np.float32)
    y = rng.integers(0, 10, 37)
    step = nn.TrainStep(model, nn.cross_entropy, optim.SGD(0.1), nn.train.data_spec(x, "x"),
                        nn.train.data_spec(y, "y"))
    return model, step, x, y


def _defined(text):
    return re.findall(r'^define [^@]*@"([^"]+)"', text, re.M)


def test_a_big_module_splits_into_two_parts_that_define_each_function_once(rng):
    _, step, _, _ = _training_step(rng)
    text = step.compiled.llvm_ir_unoptimized
    parts = split_module(text, min_lines=0)
    assert len(parts) == 2
    for part in parts:
        llvm.parse_assembly(part).verify()
    defined = [_defined(p) for p in parts]
    assert sorted(defined[0] + defined[1]) == sorted(_defined(text))
    assert "graphc_run" in defined[0] and defined[1]
    assert max(len(p.splitlines()) for p in parts) < 0.75 * len(text.splitlines())
    assert split_module(text, min_lines=len(text.splitlines()) + 1) == [text]   # small: whole
    assert split_module("; ModuleID = \"tiny\"\n", min_lines=0) == ["; ModuleID = \"tiny\"\n"]


def test_the_split_build_computes_what_the_whole_build_does(rng, monkeypatch, tmp_path):
    results = []
    for split in (True, False):
        monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path / str(split)))   # (no cache hit)
        monkeypatch.setattr(cpu_backend, "split_module",
                            (lambda raw: split_module(raw, min_lines=0)) if split else
                            (lambda raw: [raw]))
        monkeypatch.setattr(cpu_backend, "_available_cpus", lambda: 2)
        model, step, x, y = _training_step(np.random.default_rng(5))
        parts = step.compiled.llvm_ir.count(cpu_backend.PART_MARK)
        assert parts == (2 if split else 0)
        losses = [float(step(x, y)) for _ in range(3)]
        results.append((losses, {k: v.copy() for k, v in model.state_dict().items()}))
        if split:   # kernels are hidden: the library exports its entry points only
            lib = ctypes.CDLL(step.compiled.library_path)
            assert lib.graphc_run is not None
            kernel = step.compiled.kernels[0].name
            with pytest.raises(AttributeError):
                getattr(lib, kernel)
            assert f"{kernel}:" in step.compiled.asm
    (l1, w1), (l2, w2) = results
    assert l1 == l2
    for k in w1:
        np.testing.assert_array_equal(w1[k], w2[k])
