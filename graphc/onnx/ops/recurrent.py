"""Recurrent ONNX ops (LSTM, GRU, RNN) on graphc.scan.

ONNX's layout: X (T, B, I) (layout=1: (B, T, I)); per direction W (gates * H, I),
R (gates * H, H), B (2 * gates * H: W's bias, then R's); gate order LSTM (i, o, f, c),
GRU (z, r, h). Outputs Y (T, directions, B, H) (layout=1: (B, T, directions, H)), Y_h and
Y_c (directions, B, H) (layout=1: (B, directions, H)). As in graphc.nn's layers, each
direction projects the whole sequence at once (one matmul), then one scan runs the
recurrence, so one compiled model serves every sequence length.

sequence_lens masks the steps at and past each sequence's length: the state stays as it was
(a reverse pass starts at the sequence's own last step from the initial state) and Y is 0.
"""
from __future__ import annotations

import numpy as np

from ... import api
from ...ops.control import scan
from ...trace import apply
from ..importer import is_tensor, onnx_op

_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
_DEFAULT_ACTIVATIONS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"],
                        "LSTM": ["Sigmoid", "Tanh", "Tanh"]}

# name -> (function of (x, alpha, beta), default alpha, default beta); None: not used
_ACTIVATIONS = {
    "relu": (lambda x, a, b: api.relu(x), None, None),
    "tanh": (lambda x, a, b: api.tanh(x), None, None),
    "sigmoid": (lambda x, a, b: api.sigmoid(x), None, None),
    "affine": (lambda x, a, b: x * a + b, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: api.where(api.greater_equal(x, 0.0), x, x * a), 0.01, None),
    "thresholdedrelu": (lambda x, a, b: api.where(api.greater(x, a), x, x * 0.0), 1.0, None),
    "scaledtanh": (lambda x, a, b: api.tanh(x * b) * a, 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: api.clip(x * a + b, 0.0, 1.0), 0.2, 0.5),
    "elu": (lambda x, a, b: api.where(api.greater_equal(x, 0.0), x, (api.exp(x) - 1.0) * a),
            1.0, None),
    "softsign": (lambda x, a, b: x / (api.abs(x) + 1.0), None, None),
    "softplus": (lambda x, a, b: api.softplus(x), None, None),
}


def _activations(node, kind: str, directions: int) -> list[list]:
    """Per direction, the activation functions (f, g[, h]) as callables of one tensor."""
    per = len(_DEFAULT_ACTIVATIONS[kind])
    names = node.attr("activations")
    names = list(names) if names else _DEFAULT_ACTIVATIONS[kind] * directions
    if len(names) == per and directions == 2:
        names = names * 2
    if len(names) != per * directions:
        raise node.error(f"activations {names}: {kind} takes {per} per direction "
                         f"({directions} direction{'s' if directions > 1 else ''})")
    alphas = list(node.attr("activation_alpha") or [])
    betas = list(node.attr("activation_beta") or [])
    out = []
    for name in names:
        key = (name.decode() if isinstance(name, bytes) else name).lower()
        if key not in _ACTIVATIONS:
            raise node.error(f"activation {name!r} is not one of ONNX's recurrent "
                             f"activations ({', '.join(sorted(_ACTIVATIONS))})")
        fn, alpha, beta = _ACTIVATIONS[key]
        if alpha is not None and alphas:
            alpha = float(alphas.pop(0))
        if beta is not None and betas:
            beta = float(betas.pop(0))
        out.append(lambda x, fn=fn, a=alpha, b=beta: fn(x, a, b))
    return [out[d * per:(d + 1) * per] for d in range(directions)]


def _direction_count(node) -> int:
    direction = node.attr("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise node.error(f"direction {direction!r} is not forward, reverse or bidirectional")
    return 2 if direction == "bidirectional" else 1


def _initial(node, state, directions, batch, hidden, dtype, what):
    """An initial state as (directions, B, H), zeros when omitted."""
    if state is None:
        return [api.zeros((batch, hidden), dtype) for _ in range(directions)]
    state = node.tensor(state, dtype)
    if node.attr("layout", 0):
        state = api.transpose(state, (1, 0, 2))
    if tuple(state.shape[0::2]) != (directions, hidden):
        raise node.error(f"{what} has shape {tuple(state.shape)}; expected (directions, batch, "
                         f"hidden) = ({directions}, {batch}, {hidden})"
                         f"{' before the layout=1 transpose' if node.attr('layout', 0) else ''}")
    return [state[d] for d in range(directions)]


def _step_mask(node, seq_lens, length, batch, dtype):
    """(T, B, 1): 1 where step t < sequence_lens[b], else 0; None without sequence_lens."""
    if seq_lens is None:
        return None
    lens = node.tensor(seq_lens, "int64")
    steps = api.reshape(apply("iota", [], dtype="int64", shape=(length,)), (length, 1))
    inside = api.less(steps, api.reshape(lens, (1, batch)))
    return api.expand_dims(api.astype(inside, dtype), 2)


def _recurrent(node, kind, x, w, r, b, seq_lens, h0, c0=None, p=None):
    x = node.tensor(x)
    if x.ndim != 3:
        raise node.error(f"X must be (seq_length, batch, input_size), got shape "
                         f"{tuple(x.shape)}")
    layout = int(node.attr("layout", 0))
    if layout:
        x = api.transpose(x, (1, 0, 2))
    length, batch, _ = x.shape
    dtype = x.dtype
    directions = _direction_count(node)
    r_known = None if is_tensor(r) else np.asarray(r, dtype)
    w, r = node.tensor(w, dtype), node.tensor(r, dtype)
    hidden = int(node.attr("hidden_size", 0) or r.shape[-1])
    gates = _GATES[kind]
    if tuple(w.shape[:2]) != (directions, gates * hidden) or \
            tuple(r.shape) != (directions, gates * hidden, hidden):
        raise node.error(f"W {tuple(w.shape)} and R {tuple(r.shape)} do not fit {directions} "
                         f"direction(s) of {gates} gate(s) with hidden_size {hidden}")
    clip = node.attr("clip")
    acts = _activations(node, kind, directions)
    hs = _initial(node, h0, directions, batch, hidden, dtype, "initial_h")
    cs = _initial(node, c0, directions, batch, hidden, dtype, "initial_c") \
        if kind == "LSTM" else None
    mask = _step_mask(node, seq_lens, length, batch, dtype)
    b = None if b is None else node.tensor(b, dtype)
    p = None if p is None else node.tensor(p, dtype)
    reverse_only = node.attr("direction", "forward") == "reverse"
    ys, h_finals, c_finals = [], [], []
    for d in range(directions):
        wb, rb = (None, None) if b is None else \
            (b[d, :gates * hidden], b[d, gates * hidden:])
        xp = x @ api.transpose(w[d])
        if wb is not None:
            xp = xp + wb
        cell = _CELLS[kind](node, _direction(node, r_known, r, d), rb,
                            None if p is None else p[d], acts[d], hidden, clip)
        init = (hs[d], cs[d]) if kind == "LSTM" else hs[d]
        final, y = scan(_masked(cell) if mask is not None else cell, init,
                        (xp, mask) if mask is not None else xp,
                        reverse=reverse_only or d == 1)
        ys.append(api.expand_dims(y, 1))
        h_finals.append(api.expand_dims(final[0] if kind == "LSTM" else final, 0))
        if kind == "LSTM":
            c_finals.append(api.expand_dims(final[1], 0))
    y = api.concatenate(ys, 1) if directions > 1 else ys[0]          # (T, D, B, H)
    y_h = api.concatenate(h_finals, 0) if directions > 1 else h_finals[0]
    outs = [y, y_h]
    if kind == "LSTM":
        outs.append(api.concatenate(c_finals, 0) if directions > 1 else c_finals[0])
    if layout:
        outs = [api.transpose(outs[0], (2, 0, 1, 3))] + \
            [api.transpose(o, (1, 0, 2)) for o in outs[1:]]
    return outs


def _direction(node, known, r, d: int):
    """R of direction d: a constant when R is known at import (the step's matmul then reads
    it transposed once, at compile time, instead of slicing and transposing it each step)."""
    return r[d] if known is None else node.tensor(known[d])


def _masked(cell):
    """The step of a cell that keeps its state (and outputs 0) where the mask is 0."""
    def step(carry, inputs):
        xp, m = inputs
        new, y = cell(carry, xp)
        if isinstance(carry, tuple):
            kept = tuple(n * m + c * (1.0 - m) for n, c in zip(new, carry))
        else:
            kept = new * m + carry * (1.0 - m)
        return kept, y * m
    return step


def _clipped(v, clip):
    return v if clip is None else api.clip(v, -float(clip), float(clip))


def _hidden(h, r, rb):
    hp = h @ api.transpose(r)
    return hp if rb is None else hp + rb


def _rnn_cell(node, r, rb, p, acts, hidden, clip):
    (f,) = acts

    def step(h, xp):
        h = f(_clipped(xp + _hidden(h, r, rb), clip))
        return h, h
    return step


def _gru_cell(node, r, rb, p, acts, hidden, clip):
    f, g = acts
    H = hidden
    before_reset = bool(node.attr("linear_before_reset", 0))
    r_zr, r_h = r[:2 * H], r[2 * H:]
    rb_zr, rb_h = (None, None) if rb is None else (rb[:2 * H], rb[2 * H:])

    def step(h, xp):
        if before_reset:   # r gates R's product with the state (and R's bias)
            hp = _hidden(h, r, rb)
            hp_zr, hp_h = hp[:, :2 * H], hp[:, 2 * H:]
        else:
            hp_zr = _hidden(h, r_zr, rb_zr)
        z = f(_clipped(xp[:, :H] + hp_zr[:, :H], clip))
        reset = f(_clipped(xp[:, H:2 * H] + hp_zr[:, H:], clip))
        if before_reset:
            candidate = xp[:, 2 * H:] + reset * hp_h
        else:
            candidate = xp[:, 2 * H:] + _hidden(reset * h, r_h, rb_h)
        n = g(_clipped(candidate, clip))
        h = (1.0 - z) * n + z * h
        return h, h
    return step


def _lstm_cell(node, r, rb, p, acts, hidden, clip):
    f, g, act_h = acts
    H = hidden
    p_i, p_o, p_f = (None, None, None) if p is None else (p[:H], p[H:2 * H], p[2 * H:])
    coupled = bool(node.attr("input_forget", 0))     # the forget gate is 1 - the input gate

    def step(carry, xp):
        h, c = carry
        gates = xp + _hidden(h, r, rb)
        pre_i, pre_o = gates[:, :H], gates[:, H:2 * H]
        pre_f, pre_c = gates[:, 2 * H:3 * H], gates[:, 3 * H:]
        if p is not None:   # peepholes: i and f see c_{t-1}, o sees c_t
            pre_i, pre_f = pre_i + p_i * c, pre_f + p_f * c
        i = f(_clipped(pre_i, clip))
        fg = 1.0 - i if coupled else f(_clipped(pre_f, clip))
        c = fg * c + i * g(_clipped(pre_c, clip))
        if p is not None:
            pre_o = pre_o + p_o * c
        h = f(_clipped(pre_o, clip)) * act_h(c)
        return (h, c), h
    return step


_CELLS = {"RNN": _rnn_cell, "GRU": _gru_cell, "LSTM": _lstm_cell}


@onnx_op("RNN")
def _rnn(node, x, w, r, b=None, seq_lens=None, h0=None):
    return _recurrent(node, "RNN", x, w, r, b, seq_lens, h0)


@onnx_op("GRU")
def _gru(node, x, w, r, b=None, seq_lens=None, h0=None):
    return _recurrent(node, "GRU", x, w, r, b, seq_lens, h0)


@onnx_op("LSTM")
def _lstm(node, x, w, r, b=None, seq_lens=None, h0=None, c0=None, p=None):
    return _recurrent(node, "LSTM", x, w, r, b, seq_lens, h0, c0, p)



def _split_heads(t, heads):
    """(B, T, heads * size) -> (T, B, heads, size): time-major for the scan."""
    b, length, hidden = t.shape
    return api.transpose(api.reshape(t, (b, length, heads, hidden // heads)), (1, 0, 2, 3))


@onnx_op("LinearAttention")
def _linear_attention(node, q, k, v, past=None, decay=None, beta=None):
    """The recurrence S_t = exp(g_t) S_{t-1} + k_t (beta_t (v_t - S^T k_t))^T (the gate and
    the delta correction as update_rule asks), y_t = scale q_t S_t; one scan over time,
    S (B, kv_heads, d_k, d_v), query heads sharing kv heads in groups."""
    rule = node.attr("update_rule", "gated_delta")
    if rule not in ("linear", "gated", "delta", "gated_delta"):
        raise node.error(f"update_rule {rule!r} is not linear, gated, delta or gated_delta")
    gating, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
    if gating != (decay is not None):
        raise node.error(f"update_rule {rule!r} {'needs' if gating else 'takes no'} decay")
    if delta != (beta is not None):
        raise node.error(f"update_rule {rule!r} {'needs' if delta else 'takes no'} beta")
    q_heads, kv_heads = node.attr("q_num_heads"), node.attr("kv_num_heads")
    if not q_heads or not kv_heads or q_heads % kv_heads:
        raise node.error(f"q_num_heads {q_heads} must be a positive multiple of kv_num_heads "
                         f"{kv_heads}")
    out_dtype = node.tensor(q).dtype
    q, k, v = (node.tensor(t, "float32") for t in (q, k, v))    # the state is float32
    batch, length = q.shape[0], q.shape[1]
    d_k, d_v = q.shape[2] // q_heads, v.shape[2] // kv_heads
    group = q_heads // kv_heads
    xs = {"q": _split_heads(q, q_heads), "k": _split_heads(k, kv_heads),
          "v": _split_heads(v, kv_heads)}
    if gating:
        g = node.tensor(decay, "float32")
        width = g.shape[2]
        xs["g"] = _split_heads(g, kv_heads) if width != kv_heads else \
            api.transpose(api.reshape(g, (batch, length, kv_heads, 1)), (1, 0, 2, 3))
    if delta:
        bt = node.tensor(beta, "float32")
        xs["beta"] = api.transpose(api.reshape(bt, (batch, length, bt.shape[2], 1)),
                                   (1, 0, 2, 3))
    state_dtype = out_dtype
    if past is None:
        state = api.zeros((batch, kv_heads, d_k, d_v), "float32")
    else:
        state = node.tensor(past)
        state_dtype = state.dtype
        state = state if state.dtype == "float32" else state.astype("float32")
    scale = float(node.attr("scale", 0.0) or 0.0) or 1.0 / float(np.sqrt(d_k))

    def step(s, x):
        if gating:
            s = s * api.expand_dims(api.exp(x["g"]), 3)
        value = x["v"]
        key = api.expand_dims(x["k"], 2)                      # (B, H, 1, d_k)
        if delta:
            retrieved = api.squeeze(key @ s, 2)               # S^T k: (B, H, d_v)
            value = x["beta"] * (value - retrieved)
        s = s + api.transpose(key, (0, 1, 3, 2)) * api.expand_dims(value, 2)
        read = s if group == 1 else _repeat_groups(s, group)
        y = api.squeeze(api.expand_dims(x["q"], 2) @ read, 2) * scale   # (B, Hq, d_v)
        return s, y
    state, ys = scan(step, state, xs)
    y = api.reshape(api.transpose(ys, (1, 0, 2, 3)), (batch, length, q_heads * d_v))
    if y.dtype != out_dtype:
        y = y.astype(out_dtype)
    return y, state if state.dtype == state_dtype else state.astype(state_dtype)


def _repeat_groups(s, group):
    """(B, H, ...) -> (B, H * group, ...), each head repeated group times in place."""
    b, h = s.shape[0], s.shape[1]
    rest = tuple(s.shape[2:])
    wide = api.broadcast_to(api.reshape(s, (b, h, 1) + rest), (b, h, group) + rest)
    return api.reshape(wide, (b, h * group) + rest)
