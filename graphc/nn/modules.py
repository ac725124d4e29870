"""Layers. Parameters are plain named numpy arrays owned by the module; inside a trace the
module reads them through the tensors bound for that trace (see `bind`)."""
from __future__ import annotations

import contextlib
import math
import threading
from collections import OrderedDict
from typing import ClassVar, NamedTuple

import numpy as np

from .. import api
from ..errors import GraphcError, ShapeError
from ..trace import Tensor, constant, user_location

_binding = threading.local()


@contextlib.contextmanager
def bind(params: dict, training: bool, key=None):
    """Inside this block, module.param(name) returns params[(module, name)] (traced tensors);
    `key` (an int64 0-d tensor) seeds the random numbers of layers such as Dropout."""
    previous = getattr(_binding, "frame", None)
    _binding.frame = {"params": params, "training": training, "updates": {}, "key": key}
    try:
        yield _binding.frame
    finally:
        _binding.frame = previous


def _traced(values) -> bool:
    from ..tree import leaves
    return any(isinstance(leaf, Tensor) for leaf in leaves(values))


def _frame():
    frame = getattr(_binding, "frame", None)
    if frame is None:
        raise GraphcError("a module runs on graphc tensors, inside a traced function",
                          loc=user_location(),
                          fix="call it inside graphc.compile (or nn.Predict / nn.TrainStep), "
                              "or wrap it in nn.Model and use predict / fit")
    return frame


class Module:
    """Base class: subclasses create parameters with add_param and implement forward."""

    def __init__(self):
        self._params: OrderedDict[str, np.ndarray] = OrderedDict()
        self._state: OrderedDict[str, np.ndarray] = OrderedDict()
        self._children: OrderedDict[str, Module] = OrderedDict()

    # -- declaration
    def add_param(self, name: str, value: np.ndarray) -> None:
        self._params[name] = np.ascontiguousarray(value, dtype=np.float32)

    def add_state(self, name: str, value: np.ndarray) -> None:
        self._state[name] = np.ascontiguousarray(value, dtype=np.float32)

    def add_child(self, name: str, module: "Module") -> "Module":
        if not isinstance(module, Module):
            raise TypeError(f"layer {name} must be a graphc.nn.Module, got {type(module).__name__}")
        self._children[name] = module
        return module

    # -- tracing
    def param(self, name: str) -> Tensor:
        return _frame()["params"][(id(self), name)]

    def state(self, name: str) -> Tensor:
        return _frame()["params"][(id(self), name)]

    def update_state(self, name: str, value: Tensor) -> None:
        """Records the new value of a state buffer (e.g. running mean) for this step."""
        _frame()["updates"][(id(self), name)] = value

    @property
    def training(self) -> bool:
        return _frame()["training"]

    def __call__(self, *inputs, **options):
        if getattr(_binding, "frame", None) is None and _traced((inputs, options)):
            # called straight inside graphc.compile: inference, the current weights as constants
            bound = {(id(m), n): constant(arr) for _, _, m, n, arr in self._walk()}
            with bind(bound, training=False):
                return self.forward(*inputs, **options)
        return self.forward(*inputs, **options)

    def forward(self, *inputs):
        raise NotImplementedError(type(self).__name__)

    def apply(self, params: dict, *inputs, training: bool = False, key=None, **options):
        """Runs the module with `params` (a dict like parameters_tree(), of traced tensors)
        instead of its own arrays: the functional form for hand-written training loops.

        State buffers (BatchNorm's running statistics) are read from `params` when it holds
        them (named as in named_state()), else from the module as constants; their updates
        are not returned. `key` (an int64 0-d tensor) seeds Dropout when training; other
        keyword options go to forward (MultiheadAttention's attn_mask, say).
        >>> loss = lambda p, x, y: nn.cross_entropy(model.apply(p, x), y)
        >>> f = graphc.compile(graphc.value_and_grad(loss), model.parameters_tree(), xs, ys)
        """
        if not isinstance(params, dict):
            raise GraphcError(f"{type(self).__name__}.apply: params must be a dict of "
                              f"parameters by name (see parameters_tree()), got "
                              f"{type(params).__name__}", loc=user_location())
        if not _traced((params, inputs, options)):
            return self._apply_eagerly(params, inputs, training, key, options)
        entries = list(self._walk())
        names = {full for _, full, _, _, _ in entries}
        unknown = [k for k in params if k not in names]
        missing = [full for kind, full, _, _, _ in entries if kind == "param" and
                   full not in params]
        if unknown or missing:
            raise GraphcError(f"{type(self).__name__}.apply: params do not match the module's "
                              f"parameters" + (f"; missing {missing}" if missing else "") +
                              (f"; unknown {unknown}" if unknown else ""),
                              loc=user_location(),
                              fix=f"pass a dict with the keys of parameters_tree(): "
                                  f"{list(self.parameters_tree())}")
        bound = {}
        for kind, full, module, name, arr in entries:
            value = params.get(full)
            if value is None:
                value = constant(arr)
            elif not isinstance(value, Tensor):
                value = constant(np.asarray(value, np.float32))
            elif tuple(value.shape) != arr.shape:
                raise ShapeError(f"{type(self).__name__}.apply: params['{full}'] has shape "
                                 f"{tuple(value.shape)}, the module's is {arr.shape}",
                                 loc=user_location())
            bound[(id(module), name)] = value
        with bind(bound, training=training, key=key):
            return self.forward(*inputs, **options)

    def _apply_eagerly(self, params, inputs, training, key, options):
        """apply on numpy arrays: compiled on the fly (inference only)."""
        from ..compiler import compile
        from ..trace import tensor
        from ..tree import tree_map
        if training or key is not None:
            raise GraphcError("apply(..., training=True) on numpy arrays is not supported",
                              loc=user_location(),
                              fix="call apply inside a traced function (graphc.compile)")
        arrays = tree_map(np.asarray, (params, inputs))
        specs = tree_map(lambda a: tensor(a.shape, a.dtype), arrays)
        f = compile(lambda p, xs: self.apply(p, *xs, **options), *specs)
        return f(*arrays)

    # -- the arrays
    def _walk(self, prefix: str = ""):
        for name, arr in self._params.items():
            yield "param", prefix + name, self, name, arr
        for name, arr in self._state.items():
            yield "state", prefix + name, self, name, arr
        for cname, child in self._children.items():
            yield from child._walk(f"{prefix}{cname}.")

    def named_parameters(self) -> "OrderedDict[str, np.ndarray]":
        return OrderedDict((full, arr) for kind, full, _, _, arr in self._walk() if kind == "param")

    def named_state(self) -> "OrderedDict[str, np.ndarray]":
        return OrderedDict((full, arr) for kind, full, _, _, arr in self._walk() if kind == "state")

    # -- PyTorch-style state dicts
    # torch's names for this module's own arrays where they differ from graphc's ({"gamma":
    # "weight"}), and the arrays stored transposed relative to torch (Linear's weight)
    torch_names: ClassVar[dict[str, str]] = {}
    torch_transposed: ClassVar[tuple[str, ...]] = ()

    def _extra_state(self) -> OrderedDict[str, np.ndarray]:
        """Entries torch keeps that graphc does not compute with (num_batches_tracked)."""
        return OrderedDict()

    def _torch_entries(self, prefix: str = ""):
        """(torch name, module, graphc name or None for an extra, array), in torch's order:
        a module's parameters, then its buffers, then its children."""
        for name, arr in list(self._params.items()) + list(self._state.items()):
            yield prefix + self.torch_names.get(name, name), self, name, arr
        for name, arr in self._extra_state().items():
            yield prefix + name, self, None, arr
        for cname, child in self._children.items():
            yield from child._torch_entries(f"{prefix}{cname}.")

    def _torch_layout(self, name, arr: np.ndarray) -> np.ndarray:
        return arr.T if name in self.torch_transposed else arr

    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """The parameters and buffers as copies, with PyTorch's names and layouts (Linear's
        weight as (out_features, in_features)), ready for torch's load_state_dict:

            >>> torch_layer.load_state_dict({k: torch.tensor(v) for k, v in
            ...                              layer.state_dict().items()})
        """
        return OrderedDict((full, np.array(module._torch_layout(name, arr), copy=True))
                           for full, module, name, arr in self._torch_entries())

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copies arrays named as in state_dict() (e.g. from a torch module:
        {k: v.numpy() for k, v in torch_module.state_dict().items()}) into this module's own
        arrays, in place and in their dtype. With strict=True every name must match; shapes
        always must. Returns (missing_keys, unexpected_keys), as torch does.

            >>> layer.load_state_dict({k: v.numpy() for k, v in torch_layer.state_dict().items()})
        """
        if not hasattr(state_dict, "items"):
            raise GraphcError(f"load_state_dict: expected a dict of arrays by name, got "
                              f"{type(state_dict).__name__}", loc=user_location())
        entries = {full: (module, name, arr) for full, module, name, arr in self._torch_entries()}
        missing = [k for k in entries if k not in state_dict]
        unexpected = [k for k in state_dict if k not in entries]
        if strict and (missing or unexpected):
            raise GraphcError(f"{type(self).__name__}.load_state_dict: the names do not match" +
                              (f"; missing {missing}" if missing else "") +
                              (f"; unexpected {unexpected}" if unexpected else ""),
                              loc=user_location(),
                              fix=f"give exactly the keys of state_dict(): {list(entries)}, "
                                  f"or pass strict=False to load the ones that match")
        values = {}
        for full, (module, name, arr) in entries.items():
            if full not in state_dict:
                continue
            value = _as_numpy(state_dict[full])
            want = module._torch_layout(name, arr).shape
            if value.shape != want:
                raise ShapeError(f"load_state_dict: '{full}' has shape {value.shape}, the "
                                 f"module's is {want}", loc=user_location(),
                                 fix="check the layer sizes the state dict was saved with")
            values[full] = value
        for full, value in values.items():   # all checked first: no half-loaded module
            module, name, arr = entries[full]
            arr[...] = module._torch_layout(name, value)
        return _IncompatibleKeys(missing, unexpected)

    def parameters_tree(self) -> dict:
        """The parameter arrays by name, as a dict pytree ({"0.weight": array, ...}): the
        params argument of apply, and the structure its gradients come back in. The arrays
        are the module's own (not copies)."""
        return dict(self.named_parameters())

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v.shape}" for k, v in self._params.items())
        kids = "".join(f"\n  ({k}): " + repr(c).replace("\n", "\n  ")
                       for k, c in self._children.items())
        return f"{type(self).__name__}({inner}){kids}"


class _IncompatibleKeys(NamedTuple):
    missing_keys: list
    unexpected_keys: list


def _as_numpy(value) -> np.ndarray:
    """An array from a numpy array, a number or a (CPU) torch tensor."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


# ------------------------------------------------------------------ initializers

def init_weight(shape, fan_in: int, fan_out: int, method: str, rng: np.random.Generator):
    """xavier_uniform (default), xavier_normal, kaiming_uniform, kaiming_normal, normal, uniform."""
    if method == "xavier_uniform" or method == "xavier":
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-bound, bound, shape)
    if method == "xavier_normal":
        return rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), shape)
    if method == "kaiming_uniform" or method == "kaiming":
        bound = math.sqrt(6.0 / fan_in)
        return rng.uniform(-bound, bound, shape)
    if method == "kaiming_normal":
        return rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
    if method == "normal":
        return rng.normal(0.0, 0.01, shape)
    if method == "uniform":
        bound = 1.0 / math.sqrt(fan_in)
        return rng.uniform(-bound, bound, shape)
    raise ValueError(f"unknown initializer {method!r}; use xavier_uniform, xavier_normal, "
                     f"kaiming_uniform, kaiming_normal, normal or uniform")


def _rng(seed):
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


# ------------------------------------------------------------------ layers

class Linear(Module):
    """y = x @ weight + bias; weight is (in_features, out_features), the transpose of torch's
    (state_dict and load_state_dict convert)."""

    torch_transposed = ("weight",)

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init: str = "xavier_uniform", seed=0):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        rng = _rng(seed)
        self.add_param("weight", init_weight((in_features, out_features), in_features,
                                             out_features, init, rng))
        if bias:
            self.add_param("bias", np.zeros(out_features))

    def forward(self, x):
        if x.shape[-1] != self.in_features:
            raise ShapeError(f"Linear({self.in_features}, {self.out_features}) got input of shape "
                             f"{tuple(x.shape)}: last dim {x.shape[-1]} != {self.in_features}",
                             loc=user_location(),
                             fix="check the layer sizes against the data's feature count")
        y = x @ self.param("weight")
        return y + self.param("bias") if "bias" in self._params else y


class Sequential(Module):
    def __init__(self, *layers: Module):
        super().__init__()
        for i, layer in enumerate(layers):
            self.add_child(str(i), layer)

    def forward(self, *inputs):
        """The first layer gets every input; each later layer the previous one's output
        (a tuple output is passed on as several inputs)."""
        out = inputs
        for layer in self._children.values():
            out = layer(*out) if isinstance(out, tuple) else layer(out)
        return out[0] if isinstance(out, tuple) and len(out) == 1 else out

    def __getitem__(self, i: int) -> Module:
        return list(self._children.values())[i]

    def __len__(self) -> int:
        return len(self._children)


class _Activation(Module):
    fn = None

    def forward(self, x):
        return type(self).fn(x)


class ReLU(_Activation):
    fn = staticmethod(api.relu)


class Sigmoid(_Activation):
    fn = staticmethod(api.sigmoid)


class Tanh(_Activation):
    fn = staticmethod(api.tanh)


class GELU(Module):
    """GELU as torch.nn.GELU: approximate="none" (erf, the default) or "tanh"."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x):
        return api.gelu(x, approximate=self.approximate)


class LeakyReLU(Module):
    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, x):
        return api.where(x > 0, x, x * self.negative_slope)


class Softmax(Module):
    def __init__(self, axis: int = -1):
        super().__init__()
        self.axis = axis

    def forward(self, x):
        return api.softmax(x, self.axis)


class LayerNorm(Module):
    """(x - mean) / sqrt(var + eps) * gamma + beta over the last axis: one fused row kernel.
    torch calls gamma and beta weight and bias (state_dict uses torch's names)."""

    torch_names: ClassVar[dict[str, str]] = {"gamma": "weight", "beta": "bias"}

    def __init__(self, features: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.eps = float(eps)
        self.add_param("gamma", np.ones(features))
        if bias:
            self.add_param("beta", np.zeros(features))

    def forward(self, x):
        gamma = self.param("gamma")
        beta = self.param("beta") if "beta" in self._params else None
        return api.layer_norm(x, tuple(gamma.shape), gamma, beta, self.eps)


class BatchNorm1d(Module):
    """Batch statistics while training (running averages kept as state), running ones after;
    over (N, C) or (N, C, L), per channel C. state_dict uses torch's names (weight, bias,
    running_mean, running_var) and carries num_batches_tracked (int64) through load and save;
    graphc's training does not count it (it only matters to torch when momentum is None)."""

    torch_names: ClassVar[dict[str, str]] = {"gamma": "weight", "beta": "bias"}

    def __init__(self, features: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = float(momentum), float(eps)
        self.add_param("gamma", np.ones(features))
        self.add_param("beta", np.zeros(features))
        self.add_state("running_mean", np.zeros(features))
        self.add_state("running_var", np.ones(features))
        self.num_batches_tracked = np.zeros((), np.int64)

    def _extra_state(self):
        return OrderedDict(num_batches_tracked=self.num_batches_tracked)

    def forward(self, x):
        if self.training:
            axes = (0,) + tuple(range(2, x.ndim))      # all but the channel axis
            mu = api.mean(x, axes)
            d = x - api.reshape(mu, (1, -1) + (1,) * (x.ndim - 2))
            var = api.mean(d * d, axes)
            n = api.size_of(x, axes, x.dtype)
            m = self.momentum
            # the running variance is the unbiased estimate, as in PyTorch
            unbiased = var * n / api.maximum(n - 1.0, 1.0)
            self.update_state("running_mean",
                              self.state("running_mean") * (1 - m) + api.astype(mu, "float32") * m)
            self.update_state("running_var",
                              self.state("running_var") * (1 - m) + unbiased * m)
        else:
            mu, var = self.state("running_mean"), self.state("running_var")
        # the batch statistics, when training, stand in for the running ones
        return api.batch_norm(x, mu, var, self.param("gamma"), self.param("beta"), eps=self.eps)


class Dropout(Module):
    """Zeroes each element with probability p while training and scales the rest by 1/(1-p).
    The mask comes from a counter-based generator inside the kernel, so dropout fuses with its
    neighbours and costs no memory traffic; each step and each layer get their own stream."""

    _count = 0

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)
        Dropout._count += 1
        self.salt = Dropout._count * 0x9E3779B9  # separates the streams of different layers

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        key = _frame()["key"]
        if key is None:
            raise GraphcError("Dropout in training mode needs a random key",
                              fix="train through nn.TrainStep / Model.fit, which provide one")
        keep = api.random_uniform(key + self.salt, x.shape) >= self.p
        return api.where(keep, x * (1.0 / (1.0 - self.p)), 0.0)
