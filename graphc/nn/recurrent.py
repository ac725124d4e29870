"""Recurrent layers (RNN, LSTM, GRU) with PyTorch's semantics, built on graphc.scan.

Parameters carry torch's names and shapes, so a torch state_dict copies over by name:
weight_ih_l{k} (gates * hidden, input), weight_hh_l{k} (gates * hidden, hidden),
bias_ih_l{k} and bias_hh_l{k} (gates * hidden); gates are LSTM (i, f, g, o), GRU (r, z, n).
Every parameter starts uniform in (-1/sqrt(hidden), 1/sqrt(hidden)), as in torch.

Each layer projects the whole input sequence at once (one matmul over T * B rows), then one
scan runs the recurrence: per step a matmul by weight_hh and the gate arithmetic. The scan's
body is traced once, so one compiled function serves every sequence length.
"""
from __future__ import annotations

import math

from .. import api
from ..errors import GraphcError, ShapeError
from ..ops.control import scan
from ..trace import user_location
from .modules import Module, _rng

_GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}


class _Recurrent(Module):
    """What RNN, LSTM and GRU share: parameters, input layout, layers, initial states."""

    kind = ""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, seed=0):
        super().__init__()
        name = type(self).__name__
        if bidirectional:
            raise GraphcError(f"{name}(bidirectional=True) is not supported yet",
                              loc=user_location(),
                              fix="run a second layer on the time-reversed sequence")
        if dropout:
            raise GraphcError(f"{name}(dropout={dropout}) is not supported yet",
                              loc=user_location(), fix="use dropout=0")
        if int(num_layers) < 1 or int(hidden_size) < 1 or int(input_size) < 1:
            raise GraphcError(f"{name} needs positive sizes, got input_size={input_size}, "
                              f"hidden_size={hidden_size}, num_layers={num_layers}",
                              loc=user_location())
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.num_layers, self.bias, self.batch_first = int(num_layers), bool(bias), batch_first
        rng = _rng(seed)
        bound = 1.0 / math.sqrt(self.hidden_size)
        rows = _GATES[self.kind] * self.hidden_size
        for k in range(self.num_layers):
            width = self.input_size if k == 0 else self.hidden_size
            self.add_param(f"weight_ih_l{k}", rng.uniform(-bound, bound, (rows, width)))
            self.add_param(f"weight_hh_l{k}", rng.uniform(-bound, bound,
                                                          (rows, self.hidden_size)))
            if self.bias:
                self.add_param(f"bias_ih_l{k}", rng.uniform(-bound, bound, rows))
                self.add_param(f"bias_hh_l{k}", rng.uniform(-bound, bound, rows))

    def _layer_params(self, k: int):
        w_ih, w_hh = self.param(f"weight_ih_l{k}"), self.param(f"weight_hh_l{k}")
        if not self.bias:
            return w_ih, w_hh, None, None
        return w_ih, w_hh, self.param(f"bias_ih_l{k}"), self.param(f"bias_hh_l{k}")

    def _sequence(self, x):
        """x as (T, B, input) and whether it was unbatched (T, input)."""
        name = type(self).__name__
        if x.ndim not in (2, 3) or x.shape[-1] != self.input_size:
            raise ShapeError(f"{name}({self.input_size}, {self.hidden_size}) got input of shape "
                             f"{tuple(x.shape)}; it takes (T, B, {self.input_size})"
                             f"{' with batch_first=False' if not self.batch_first else ''}, "
                             f"(B, T, {self.input_size}) with batch_first=True, or "
                             f"(T, {self.input_size})", loc=user_location(),
                             fix="check the feature count and the batch_first setting")
        if x.ndim == 2:
            return api.expand_dims(x, 1), True
        return (api.transpose(x, (1, 0, 2)) if self.batch_first else x), False

    def _initial(self, h0, batch, unbatched: bool, what: str):
        """The per-layer initial states: zeros, or the slices of h0 (L, B, H) / (L, H)."""
        shape = (batch, self.hidden_size)
        if h0 is None:
            return [api.zeros(shape) for _ in range(self.num_layers)]
        want = (self.num_layers, self.hidden_size) if unbatched else \
            (self.num_layers, batch, self.hidden_size)
        if tuple(h0.shape) != want:
            raise ShapeError(f"{type(self).__name__}: {what} has shape {tuple(h0.shape)}, "
                             f"expected {want}", loc=user_location(),
                             fix="the initial state is (num_layers, batch, hidden_size)")
        if unbatched:
            h0 = api.expand_dims(h0, 1)
        return [h0[k] for k in range(self.num_layers)]

    def _output(self, ys, unbatched: bool):
        if unbatched:
            return api.squeeze(ys, 1)
        return api.transpose(ys, (1, 0, 2)) if self.batch_first else ys

    def _final(self, states, unbatched: bool):
        stacked = api.concatenate([api.expand_dims(s, 0) for s in states], 0)
        return api.squeeze(stacked, 1) if unbatched else stacked

    def _project(self, x, w_ih, b_ih):
        """x (T, B, I) @ w_ih.T (+ b_ih) for every step at once."""
        xp = x @ api.transpose(w_ih)
        return xp + b_ih if b_ih is not None else xp


def _hidden(h, w_hh, b_hh):
    hp = h @ api.transpose(w_hh)
    return hp + b_hh if b_hh is not None else hp


class RNN(_Recurrent):
    """Elman RNN: h_t = nonlinearity(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh).

    forward(x, h0=None) -> (output (T, B, H), h_n (num_layers, B, H)); batch_first puts B
    first in x and output.
    >>> rnn = nn.RNN(8, 16, num_layers=2)
    >>> out, h_n = rnn(x)            # x: (T, B, 8) -> out: (T, B, 16)
    """

    kind = "RNN"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, seed=0):
        if nonlinearity not in ("tanh", "relu"):
            raise GraphcError(f"RNN: unknown nonlinearity {nonlinearity!r}; use 'tanh' or "
                              f"'relu'", loc=user_location())
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, seed)
        self.nonlinearity = nonlinearity

    def forward(self, x, h0=None):
        x, unbatched = self._sequence(x)
        hs = self._initial(h0, x.shape[1], unbatched, "h0")
        act = api.tanh if self.nonlinearity == "tanh" else api.relu
        finals = []
        for k in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = self._layer_params(k)

            def step(h, xp, w_hh=w_hh, b_hh=b_hh):
                h = act(xp + _hidden(h, w_hh, b_hh))
                return h, h
            h_n, x = scan(step, hs[k], self._project(x, w_ih, b_ih))
            finals.append(h_n)
        return self._output(x, unbatched), self._final(finals, unbatched)


class LSTM(_Recurrent):
    """Long short-term memory, torch's gates (i, f, g, o):
    c_t = f * c_{t-1} + i * g, h_t = o * tanh(c_t).

    forward(x, (h0, c0)=None) -> (output (T, B, H), (h_n, c_n)), states (num_layers, B, H).
    >>> out, (h_n, c_n) = nn.LSTM(8, 16)(x)
    """

    kind = "LSTM"

    def forward(self, x, state=None):
        x, unbatched = self._sequence(x)
        h0, c0 = (None, None) if state is None else state
        hs = self._initial(h0, x.shape[1], unbatched, "h0")
        cs = self._initial(c0, x.shape[1], unbatched, "c0")
        H = self.hidden_size
        h_finals, c_finals = [], []
        for k in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = self._layer_params(k)

            def step(carry, xp, w_hh=w_hh, b_hh=b_hh):
                h, c = carry
                gates = xp + _hidden(h, w_hh, b_hh)
                i = api.sigmoid(gates[:, 0:H])
                f = api.sigmoid(gates[:, H:2 * H])
                g = api.tanh(gates[:, 2 * H:3 * H])
                o = api.sigmoid(gates[:, 3 * H:4 * H])
                c = f * c + i * g
                h = o * api.tanh(c)
                return (h, c), h
            (h_n, c_n), x = scan(step, (hs[k], cs[k]), self._project(x, w_ih, b_ih))
            h_finals.append(h_n)
            c_finals.append(c_n)
        return self._output(x, unbatched), (self._final(h_finals, unbatched),
                                            self._final(c_finals, unbatched))


class GRU(_Recurrent):
    """Gated recurrent unit, torch's gates (r, z, n):
    n_t = tanh(W_in x_t + b_in + r * (W_hn h_{t-1} + b_hn)), h_t = (1 - z) * n_t + z * h_{t-1}.

    forward(x, h0=None) -> (output (T, B, H), h_n (num_layers, B, H)).
    >>> out, h_n = nn.GRU(8, 16, batch_first=True)(x)     # x: (B, T, 8)
    """

    kind = "GRU"

    def forward(self, x, h0=None):
        x, unbatched = self._sequence(x)
        hs = self._initial(h0, x.shape[1], unbatched, "h0")
        H = self.hidden_size
        finals = []
        for k in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = self._layer_params(k)

            def step(h, xp, w_hh=w_hh, b_hh=b_hh):
                hp = _hidden(h, w_hh, b_hh)
                r = api.sigmoid(xp[:, 0:H] + hp[:, 0:H])
                z = api.sigmoid(xp[:, H:2 * H] + hp[:, H:2 * H])
                n = api.tanh(xp[:, 2 * H:3 * H] + r * hp[:, 2 * H:3 * H])
                h = (1.0 - z) * n + z * h
                return h, h
            h_n, x = scan(step, hs[k], self._project(x, w_ih, b_ih))
            finals.append(h_n)
        return self._output(x, unbatched), self._final(finals, unbatched)


__all__ = ["GRU", "LSTM", "RNN"]
