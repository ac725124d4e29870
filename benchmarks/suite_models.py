"""The suite's model workloads (W8-W10): a CNN, a transformer encoder layer and an LSTM, for
inference and training steps, written once per contender (graphc, torch, JAX, tinygrad; ONNX
Runtime runs the exported torch model).

Every contender starts from the same weights: make_data draws them from fixed seeds, in
PyTorch's names and layouts (NAMES), and each contender loads them. The reference is the
same model in float64 PyTorch, computed once per run by a child of its own (write_references)
and read from a file by the others, so no timed process imports torch for it.
"""
from __future__ import annotations

import math
import os

import numpy as np

# W8: conv3x3(3->32) ReLU maxpool2, conv3x3(32->64) ReLU maxpool2, flatten, Linear(4096->10)
X8, C8 = (64, 3, 32, 32), (32, 64, 10)
LR8, MOMENTUM8 = 0.01, 0.9
# W9: TransformerEncoderLayer(d_model 256, 4 heads, ff 1024, ReLU, post-norm, no dropout)
B9, S9, E9, H9, F9 = 16, 128, 256, 4, 1024
LR9 = 1e-3
# W10t: LSTM(64 -> 256), one layer, (T, B, I) = (100, 64, 64)
T10, B10, I10, H10 = 100, 64, 64, 256
LR10 = 0.01

KEYS = ("W8", "W8t", "W9", "W9t", "W10t")
TRAIN = ("W8t", "W9t", "W10t")
WORKLOADS = {
    "W8": ("CNN inference 2x(conv3x3-ReLU-maxpool) + Linear, (64, 3, 32, 32)", "samples/s",
           64),
    "W8t": ("CNN train step, batch 64 (softmax CE, SGD momentum 0.9, lr 0.01)", "samples/s",
            64),
    "W9": ("TransformerEncoderLayer(256, 4 heads, ff 1024) inference, (16, 128, 256)",
           "samples/s", 16),
    "W9t": ("TransformerEncoderLayer train step, batch 16 x 128 (MSE to a target, Adam)",
            "samples/s", 16),
    "W10t": ("LSTM(64, 256) train step, 100 steps, batch 64 (MSE to a target, SGD)",
             "samples/s", 64),
}


class NotApplicable(Exception):
    """A contender that has no implementation of a workload (the report says why)."""


def family(key: str) -> str:
    return key.rstrip("t")


def param_shapes(key: str) -> list[tuple[str, tuple]]:
    """(PyTorch name, shape) of every parameter, in the order of torch's named_parameters."""
    if family(key) == "W8":
        a, b, n = C8
        return [("0.weight", (a, X8[1], 3, 3)), ("0.bias", (a,)), ("3.weight", (b, a, 3, 3)),
                ("3.bias", (b,)), ("7.weight", (n, b * 8 * 8)), ("7.bias", (n,))]
    if family(key) == "W9":
        e, f = E9, F9
        return [("self_attn.in_proj_weight", (3 * e, e)), ("self_attn.in_proj_bias", (3 * e,)),
                ("self_attn.out_proj.weight", (e, e)), ("self_attn.out_proj.bias", (e,)),
                ("linear1.weight", (f, e)), ("linear1.bias", (f,)), ("linear2.weight", (e, f)),
                ("linear2.bias", (e,)), ("norm1.weight", (e,)), ("norm1.bias", (e,)),
                ("norm2.weight", (e,)), ("norm2.bias", (e,))]
    h = H10
    return [("weight_ih_l0", (4 * h, I10)), ("weight_hh_l0", (4 * h, h)),
            ("bias_ih_l0", (4 * h,)), ("bias_hh_l0", (4 * h,))]


def names(key: str) -> list[str]:
    return [n for n, _ in param_shapes(key)]


def n_inputs(key: str) -> int:
    """Data arrays before the parameters in make_data's list: x, and the target when training."""
    return 2 if key in TRAIN else 1


def make_data(key: str) -> list:
    """[x, (target,) *parameters]: weights uniform in +-1/sqrt(fan in) as torch draws them,
    biases and norm parameters away from 0 and 1 so that a mix-up shows."""
    rng = np.random.default_rng({"W8": 8, "W9": 9, "W10": 10}[family(key)])
    f32 = np.float32
    params = []
    for name, shape in param_shapes(key):
        if family(key) == "W10":
            bound = 1 / math.sqrt(H10)
            params.append(rng.uniform(-bound, bound, shape).astype(f32))
        elif name.startswith("norm") and name.endswith("weight"):
            params.append((1 + 0.1 * rng.standard_normal(shape)).astype(f32))
        elif len(shape) == 1:
            params.append((0.1 * rng.standard_normal(shape)).astype(f32))
        else:
            bound = 1 / math.sqrt(math.prod(shape[1:]))
            params.append(rng.uniform(-bound, bound, shape).astype(f32))
    if family(key) == "W8":
        x = rng.standard_normal(X8, dtype=f32)
        target = rng.integers(0, C8[-1], X8[0]).astype(np.int64)
    elif family(key) == "W9":
        x = rng.standard_normal((B9, S9, E9), dtype=f32)
        target = rng.standard_normal((B9, S9, E9), dtype=f32)
    else:
        x = rng.standard_normal((T10, B10, I10), dtype=f32)
        target = (0.5 * rng.standard_normal((T10, B10, H10))).astype(f32)
    return ([x, target] if key in TRAIN else [x]) + params


# ================================================================== costs for the roofline
# FLOPs count multiply-adds as 2. A training step: the forward, and the backward's two
# products per matmul or convolution (gradients of the input and of the weight), less the
# input gradient of the first layer, which nobody needs: 3x forward - first. Bytes: inputs,
# weights and outputs read or written once (intermediates not counted); a training step
# reads the batch and the target, and reads and writes every parameter and optimizer slot.

def cost(key: str) -> tuple[float, float]:
    """(bytes, FLOPs) of one call."""
    n_params = sum(math.prod(s) for _, s in param_shapes(key))
    if family(key) == "W8":
        n, c, h, w = X8
        a, b, classes = C8
        conv1 = 2 * n * a * h * w * c * 3 * 3               # 2*N*O*OH*OW*C*KH*KW
        conv2 = 2 * n * b * (h // 2) * (w // 2) * a * 3 * 3
        linear = 2 * n * (b * 8 * 8) * classes
        flops, first = conv1 + conv2 + linear, conv1
        data_in, data_out = n * c * h * w, n * classes
        target, slots = n, 1                                  # int64 labels; momentum
    elif family(key) == "W9":
        tokens, e, f = B9 * S9, E9, F9
        projections = 2 * tokens * e * (3 * e) + 2 * tokens * e * e
        attention = 2 * (2 * B9 * S9 * S9 * e)                # Q K^T and weights @ V
        feed_forward = 2 * (2 * tokens * e * f)
        flops = projections + attention + feed_forward
        first = 2 * tokens * e * (3 * e)                      # x's part of Q, K, V
        data_in = data_out = tokens * e
        target, slots = tokens * e * 2, 2                     # float target (int64 words); m, v
    else:
        rows = T10 * B10
        first = 2 * rows * I10 * 4 * H10                      # the input projection
        flops = first + 2 * rows * H10 * 4 * H10
        data_in, data_out = rows * I10, rows * H10
        target, slots = rows * H10 * 2, 0
    if key in TRAIN:
        # 4 bytes a float: data, target (8-byte words counted as 2), params read + written
        return 4.0 * (data_in + target + 2 * n_params * (1 + slots)), 3.0 * flops - first
    return 4.0 * (data_in + n_params + data_out), float(flops)


# ================================================================== PyTorch models

def torch_model(key: str, torch, params, dtype=None):
    """The workload's torch module with these parameters (numpy arrays in NAMES order)."""
    T = torch.nn
    if family(key) == "W8":
        a, b, classes = C8
        net = T.Sequential(T.Conv2d(X8[1], a, 3, padding=1), T.ReLU(), T.MaxPool2d(2),
                           T.Conv2d(a, b, 3, padding=1), T.ReLU(), T.MaxPool2d(2), T.Flatten(),
                           T.Linear(b * 8 * 8, classes))
    elif family(key) == "W9":
        net = T.TransformerEncoderLayer(E9, H9, F9, dropout=0.0, activation="relu",
                                        batch_first=True, norm_first=False)
    else:
        net = T.LSTM(I10, H10)
    net.load_state_dict({n: torch.from_numpy(np.ascontiguousarray(p))
                         for n, p in zip(names(key), params)})
    return net.to(dtype) if dtype is not None else net


def torch_forward(key: str, net):
    """x -> the workload's output: the LSTM's output sequence, the others' result."""
    if family(key) == "W10":
        return lambda x: net(x)[0]
    return net


def torch_trainer(key: str, torch, net, forward):
    """step(x, target) -> loss: one forward, backward and optimizer step."""
    F = torch.nn.functional
    if key == "W8t":
        opt = torch.optim.SGD(net.parameters(), lr=LR8, momentum=MOMENTUM8)
        loss_fn = F.cross_entropy
    elif key == "W9t":
        opt = torch.optim.Adam(net.parameters(), lr=LR9)
        loss_fn = F.mse_loss
    else:
        opt = torch.optim.SGD(net.parameters(), lr=LR10)
        loss_fn = F.mse_loss

    def step(x, target):
        opt.zero_grad()
        loss = loss_fn(forward(x), target)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def torch_arrays(key: str, net) -> list:
    state = net.state_dict()
    return [state[n].detach().numpy() for n in names(key)]


def reference(key: str, data):
    """float64 PyTorch: the output, or (loss, updated parameters) after one step."""
    import torch
    n_in = n_inputs(key)
    net = torch_model(key, torch, data[n_in:], torch.float64)
    x = torch.from_numpy(data[0]).double()
    forward = torch_forward(key, net)
    if key not in TRAIN:
        net.eval()
        with torch.no_grad():
            return forward(x).numpy()
    target = torch.from_numpy(data[1])
    target = target.double() if target.is_floating_point() else target
    loss = torch_trainer(key, torch, net, forward)(x, target)
    return loss, [a.copy() for a in torch_arrays(key, net)]


def reference_path(key: str) -> str | None:
    folder = os.environ.get("GRAPHC_BENCH_REFERENCES")
    return os.path.join(folder, f"{key}.npz") if folder else None


def write_references(keys, threads: int) -> dict:
    """Computes each model workload's reference into GRAPHC_BENCH_REFERENCES/KEY.npz."""
    import torch
    torch.set_num_threads(threads)
    done = {}
    for key in keys:
        want = reference(key, make_data(key))
        if isinstance(want, tuple):
            np.savez(reference_path(key), *want[1], loss=np.float64(want[0]))
        else:
            np.savez(reference_path(key), out=want)
        done[key] = "ok"
    return done


def load_reference(key: str):
    path = reference_path(key)
    if not path or not os.path.exists(path):
        raise FileNotFoundError(f"no reference for {key}: the suite computes it with PyTorch "
                                f"(float64), which needs torch installed")
    with np.load(path) as f:
        if key not in TRAIN:
            return f["out"]
        return float(f["loss"]), [f[f"arr_{i}"] for i in range(len(names(key)))]


# ================================================================== graphc

def graphc_impl(key: str, data, fused: bool = True):
    import graphc
    from benchmarks.suite import _train_runner
    from graphc import nn, optim
    n_in = n_inputs(key)
    model, inner = _graphc_model(key, nn)
    inner.load_state_dict(dict(zip(names(key), data[n_in:])))
    x = data[0]
    x_spec = graphc.tensor(x.shape, "float32", "x")
    if key not in TRAIN:
        compiled = graphc.compile(lambda x: model(x), x_spec, fuse_ops=fused)
        return lambda: compiled(x)
    y = data[1]
    loss, opt = {"W8t": (nn.cross_entropy, optim.SGD(LR8, momentum=MOMENTUM8)),
                 "W9t": (nn.mse, optim.Adam(LR9)),
                 "W10t": (nn.mse, optim.SGD(LR10))}[key]
    step = nn.TrainStep(model, loss, opt, x_spec, graphc.tensor(y.shape, str(y.dtype), "y"),
                        fuse_ops=fused)

    def arrays():
        state = inner.state_dict()   # torch layouts (Linear weights transposed back)
        return [state[n] for n in names(key)]
    return _train_runner(lambda: step(x, y), arrays)


def _graphc_model(key: str, nn):
    """(the model, the module whose state_dict has the torch names)."""
    if family(key) == "W8":
        a, b, classes = C8
        net = nn.Sequential(nn.Conv2d(X8[1], a, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(a, b, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Flatten(), nn.Linear(b * 8 * 8, classes))
        return net, net
    if family(key) == "W9":
        layer = nn.TransformerEncoderLayer(E9, H9, F9, dropout=0.0, activation="relu",
                                           batch_first=True)
        return layer, layer
    lstm = nn.LSTM(I10, H10)

    class Output(nn.Module):   # the output sequence, without the final states
        def __init__(self):
            super().__init__()
            self.add_child("lstm", lstm)

        def forward(self, x):
            return lstm(x)[0]
    return Output(), lstm


# ================================================================== PyTorch, ONNX Runtime

def torch_impl(key: str, data, compiled: bool = False):
    import torch

    from benchmarks.suite import _train_runner
    n_in = n_inputs(key)
    net = torch_model(key, torch, data[n_in:])
    forward = torch_forward(key, torch.compile(net) if compiled else net)
    x = torch.from_numpy(data[0])
    if key not in TRAIN:
        net.eval()

        def run():
            with torch.no_grad():
                return forward(x).numpy()
        return run
    target = torch.from_numpy(data[1])
    step = torch_trainer(key, torch, net, forward)
    return _train_runner(lambda: step(x, target), lambda: torch_arrays(key, net))


def onnx_module(key: str, torch, data):
    """(module, inputs) to export: the eval-mode model called on x alone (exported bare,
    TransformerEncoderLayer's is_causal default becomes an input and the export fails)."""
    net = torch_model(key, torch, data[n_inputs(key):]).eval()
    forward = torch_forward(key, net)

    class Call(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return forward(x)
    return Call(), [data[0]]


# ================================================================== JAX

def jax_impl(key: str, data):
    import jax
    import jax.numpy as jnp

    from benchmarks.suite import _train_runner
    n_in = n_inputs(key)
    fwd = {"W8": _jax_cnn, "W9": _jax_encoder, "W10": _jax_lstm}[family(key)]
    x = jnp.asarray(data[0])
    params = [jnp.asarray(a) for a in data[n_in:]]
    if key not in TRAIN:   # the weights closed over: constants, as graphc's and ONNX's are
        f = jax.jit(lambda x: fwd(params, x))
        return lambda: f(x).block_until_ready()
    y = jnp.asarray(data[1])

    def loss_fn(ps, x, y):
        out = fwd(ps, x)
        if key == "W8t":
            logp = jax.nn.log_softmax(out, -1)
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], 1))
        return jnp.mean((out - y) ** 2)

    init, update = _jax_optimizer(key, jnp)

    def step(ps, slots, t, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(ps, x, y)
        ps, slots = update(ps, grads, slots, t)
        return loss, ps, slots
    step = jax.jit(step, donate_argnums=(0, 1))   # in place, as the others update
    state = {"ps": params, "slots": init(params), "t": 0}

    def one():
        state["t"] += 1
        loss, state["ps"], state["slots"] = step(state["ps"], state["slots"],
                                                 jnp.float32(state["t"]), x, y)
        return float(loss)
    return _train_runner(one, lambda: [np.asarray(p) for p in state["ps"]])


def _jax_optimizer(key: str, jnp):
    """(init(params) -> slots, update(params, grads, slots, t) -> (params, slots)), as torch's
    SGD (v = mu v + g) and Adam."""
    if key == "W9t":
        b1, b2, eps = 0.9, 0.999, 1e-8

        def update(ps, gs, slots, t):
            ms = [b1 * m + (1 - b1) * g for m, g in zip(slots[0], gs)]
            vs = [b2 * v + (1 - b2) * g * g for v, g in zip(slots[1], gs)]
            c1, c2 = 1 - b1 ** t, 1 - b2 ** t
            ps = [p - LR9 * (m / c1) / (jnp.sqrt(v / c2) + eps) for p, m, v in zip(ps, ms, vs)]
            return ps, (ms, vs)
        return lambda ps: ([jnp.zeros_like(p) for p in ps], [jnp.zeros_like(p) for p in ps]), \
            update
    if key == "W8t":
        def update(ps, gs, slots, t):
            vs = [MOMENTUM8 * v + g for v, g in zip(slots, gs)]
            return [p - LR8 * v for p, v in zip(ps, vs)], vs
        return lambda ps: [jnp.zeros_like(p) for p in ps], update
    return lambda ps: [], lambda ps, gs, slots, t: ([p - LR10 * g for p, g in zip(ps, gs)], [])


def _jax_cnn(ps, x):
    import jax
    from jax import lax
    w1, b1, w2, b2, w3, b3 = ps

    def conv(h, w, b):
        out = lax.conv_general_dilated(h, w, (1, 1), ((1, 1), (1, 1)),
                                       dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return out + b[None, :, None, None]

    def pool(h):
        return lax.reduce_window(h, -float("inf"), lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    h = pool(jax.nn.relu(conv(x, w1, b1)))
    h = pool(jax.nn.relu(conv(h, w2, b2)))
    return h.reshape(h.shape[0], -1) @ w3.T + b3


def _jax_layernorm(x, g, b):
    import jax
    m = x.mean(-1, keepdims=True)
    return (x - m) * jax.lax.rsqrt(((x - m) ** 2).mean(-1, keepdims=True) + 1e-5) * g + b


def _jax_encoder(ps, x):
    import jax
    w_in, b_in, w_o, b_o, w1, b1, w2, b2, g1, n1, g2, n2 = ps
    n, s, e = x.shape
    d = e // H9
    qkv = x @ w_in.T + b_in
    q, k, v = (qkv[..., i * e:(i + 1) * e].reshape(n, s, H9, d).transpose(0, 2, 1, 3)
               for i in range(3))
    weights = jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(d), -1)
    a = (weights @ v).transpose(0, 2, 1, 3).reshape(n, s, e) @ w_o.T + b_o
    h = _jax_layernorm(x + a, g1, n1)
    f = jax.nn.relu(h @ w1.T + b1) @ w2.T + b2
    return _jax_layernorm(h + f, g2, n2)


def _jax_lstm(ps, x):
    import jax
    import jax.numpy as jnp
    w_ih, w_hh, b_ih, b_hh = ps
    hidden = w_hh.shape[1]

    def body(carry, xp):
        h, c = carry
        gates = xp + h @ w_hh.T + b_hh
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h
    zeros = jnp.zeros((x.shape[1], hidden), x.dtype)
    _, ys = jax.lax.scan(body, (zeros, zeros), x @ w_ih.T + b_ih)
    return ys


# ================================================================== tinygrad

def tinygrad_impl(key: str, data):
    from tinygrad import Context, Tensor, TinyJit
    from tinygrad.nn import optim

    from benchmarks.suite import _train_runner
    n_in = n_inputs(key)
    train = key in TRAIN
    if family(key) == "W10":
        raise NotApplicable("tinygrad has no loop construct: the 100 LSTM steps unroll into "
                            "one graph, whose training step had not compiled after 300 s here")
    fwd = {"W8": _tiny_cnn, "W9": _tiny_encoder}[family(key)]
    params = [Tensor(a.copy()).is_param_(train).realize() for a in data[n_in:]]
    x = Tensor(data[0]).is_param_(False).realize()
    if not train:
        f = TinyJit(lambda x: fwd(params, x).realize())
        return lambda: f(x).numpy()
    y = Tensor(data[1]).is_param_(False).realize()
    if key == "W8t":
        opt = optim.SGD(params, lr=LR8, momentum=MOMENTUM8)
    elif key == "W9t":
        opt = optim.Adam(params, lr=LR9)
    else:
        opt = optim.SGD(params, lr=LR10)

    @TinyJit
    def step(x, y):
        with Context(TRAINING=1):
            opt.zero_grad()
            out = fwd(params, x)
            if key == "W8t":
                loss = out.sparse_categorical_crossentropy(y)
            else:
                loss = ((out - y) ** 2).mean()
            loss.backward()
            # realized with the update: realized after it, the loss reads the new weights
            Tensor.realize(loss, *opt.schedule_step())
            return loss
    return _train_runner(lambda: step(x, y).item(), lambda: [p.numpy() for p in params])


def _tiny_cnn(ps, x):
    w1, b1, w2, b2, w3, b3 = ps
    h = x.conv2d(w1, b1, padding=1).relu().max_pool2d(2)
    h = h.conv2d(w2, b2, padding=1).relu().max_pool2d(2)
    return h.flatten(1).linear(w3.T, b3)


def _tiny_encoder(ps, x):
    w_in, b_in, w_o, b_o, w1, b1, w2, b2, g1, n1, g2, n2 = ps
    n, s, e = x.shape
    d = e // H9
    qkv = x.linear(w_in.T, b_in)
    q, k, v = (qkv[:, :, i * e:(i + 1) * e].reshape(n, s, H9, d).transpose(1, 2)
               for i in range(3))
    a = q.scaled_dot_product_attention(k, v).transpose(1, 2).reshape(n, s, e)
    h = (x + a.linear(w_o.T, b_o)).layernorm(eps=1e-5) * g1 + n1
    f = h.linear(w1.T, b1).relu().linear(w2.T, b2)
    return (h + f).layernorm(eps=1e-5) * g2 + n2

