"""Recurrent ONNX ops (LSTM, GRU, RNN) on graphc.scan."""
from __future__ import annotations
