"""The model examples (examples/cnn_digits.py, lstm_sequence.py, char_transformer.py) run
end to end, with fewer steps than their own runs, and learn: against PyTorch's curve from the
same weights, against the baseline of predicting the mean, against the unigram entropy.
examples/onnx_import.py agrees with ONNX Runtime and its artifact serves the same logits."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

# the examples' training runs take 10-20 s each: CI runs them with `pytest -m slow`
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def example(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "examples",
                                                                     f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cnn_digits_follows_torch_from_the_same_weights():
    pytest.importorskip("sklearn")
    pytest.importorskip("torch")
    acc, curve, torch_curve = example("cnn_digits").main(epochs=3)
    assert acc > 0.9
    # same initial weights, batches and hyperparameters: the same loss curve, epoch by epoch
    np.testing.assert_allclose(curve, torch_curve, rtol=1e-4)
    assert curve[-1] < 0.5 * curve[0]


def test_lstm_learns_the_adding_problem_at_every_length():
    mod = example("lstm_sequence")
    scores = mod.main(steps=700)
    assert all(v < 0.3 * mod.BASELINE for v in scores.values()), scores


def test_char_transformer_gets_well_below_the_unigram_entropy(capsys):
    held_out, entropy = example("char_transformer").main(steps=200)
    assert 2.5 < entropy < 3.5           # a code file's characters: about 2.9 nats
    assert held_out < 0.8 * entropy, (held_out, entropy)
    assert "sample after" in capsys.readouterr().out


def test_onnx_import_matches_onnxruntime_and_serves_from_the_runtime(tmp_path):
    for module in ("torch", "onnx", "onnxruntime"):
        pytest.importorskip(module)
    errors, identical = example("onnx_import").main(batches=(1, 3), folder=str(tmp_path))
    assert set(errors) == {1, 3}
    assert max(errors.values()) < 1e-5, errors
    assert identical
