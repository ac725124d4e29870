"""Convolution, pooling, flattening, 2-d batch norm and embedding layers, with PyTorch's
names, arguments, parameter layouts (weight (out, in / groups, *kernel)) and default
initialization, so a PyTorch state_dict loads as it is."""
from __future__ import annotations

import math

import numpy as np

from .. import api
from ..errors import ShapeError
from ..autodiff import stop_gradient
from ..ops import conv as C
from ..ops.indexing import take
from ..trace import user_location
from .modules import BatchNorm1d, Module, _rng


def _pair(v, r: int) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * r


class _ConvNd(Module):
    _rank = 2
    _transposed = False

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 output_padding=0, seed=0):
        super().__init__()
        name = type(self).__name__
        if padding_mode != "zeros":
            raise ShapeError(f"{name}: padding_mode {padding_mode!r} is not supported",
                             loc=user_location(), fix="use padding_mode='zeros'")
        if in_channels % groups or out_channels % groups:
            raise ShapeError(f"{name}: in_channels {in_channels} and out_channels "
                             f"{out_channels} must be divisible by groups {groups}",
                             loc=user_location())
        r = self._rank
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _pair(kernel_size, r)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.output_padding, self.groups = output_padding, int(groups)
        if self._transposed:
            shape = (in_channels, out_channels // groups) + self.kernel_size
        else:
            shape = (out_channels, in_channels // groups) + self.kernel_size
        # PyTorch's default: kaiming_uniform(a=sqrt(5)) on the weight, which is
        # uniform(+-1/sqrt(fan_in)), fan_in = shape[1] * prod(kernel); the bias likewise
        fan_in = shape[1] * int(np.prod(self.kernel_size))
        bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
        rng = _rng(seed)
        self.add_param("weight", rng.uniform(-bound, bound, shape))
        if bias:
            self.add_param("bias", rng.uniform(-bound, bound, out_channels))

    def _bias(self):
        return self.param("bias") if "bias" in self._params else None


class Conv1d(_ConvNd):
    """torch.nn.Conv1d over (N, C_in, L)."""
    _rank = 1

    def forward(self, x):
        return C.conv1d(x, self.param("weight"), self._bias(), self.stride, self.padding,
                        self.dilation, self.groups)


class Conv2d(_ConvNd):
    """torch.nn.Conv2d over (N, C_in, H, W)."""

    def forward(self, x):
        return C.conv2d(x, self.param("weight"), self._bias(), self.stride, self.padding,
                        self.dilation, self.groups)


class ConvTranspose2d(_ConvNd):
    """torch.nn.ConvTranspose2d: weight (in_channels, out_channels / groups, KH, KW)."""
    _transposed = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 output_padding=0, groups: int = 1, bias: bool = True, dilation=1,
                 padding_mode: str = "zeros", seed=0):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, output_padding, seed)

    def forward(self, x):
        return C.conv_transpose2d(x, self.param("weight"), self._bias(), self.stride,
                                  self.padding, self.output_padding, self.dilation, self.groups)


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        self.args = (kernel_size, stride, padding, dilation, ceil_mode)

    def forward(self, x):
        return C.max_pool2d(x, *self.args)


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        super().__init__()
        self.args = (kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override)

    def forward(self, x):
        return C.avg_pool2d(x, *self.args)


class AdaptiveAvgPool2d(Module):
    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return C.adaptive_avg_pool2d(x, self.output_size)


class Flatten(Module):
    """torch.nn.Flatten: axes start_dim..end_dim merged into one."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        a, b = self.start_dim % x.ndim, self.end_dim % x.ndim
        if a > b:
            raise ShapeError(f"Flatten({self.start_dim}, {self.end_dim}): start_dim comes after "
                             f"end_dim for an input of rank {x.ndim}", loc=user_location())
        merged = 1
        for d in x.shape[a:b + 1]:
            merged = d * merged
        return api.reshape(x, tuple(x.shape[:a]) + (merged,) + tuple(x.shape[b + 1:]))


class BatchNorm2d(BatchNorm1d):
    """torch.nn.BatchNorm2d over (N, C, H, W): statistics per channel over N, H and W."""

    def forward(self, x):
        if x.ndim != 4:
            raise ShapeError(f"BatchNorm2d expects (N, C, H, W), got shape {tuple(x.shape)}",
                             loc=user_location())
        return super().forward(x)


class Embedding(Module):
    """torch.nn.Embedding: rows of weight (num_embeddings, embedding_dim), N(0, 1) at first,
    picked by integer ids of any shape; the padding_idx row starts at zero and gets no
    gradient."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx=None, seed=0):
        super().__init__()
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        weight = _rng(seed).standard_normal((num_embeddings, embedding_dim))
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ShapeError(f"Embedding: padding_idx {padding_idx} is out of range for "
                                 f"{num_embeddings} embeddings", loc=user_location())
            padding_idx %= num_embeddings
            weight[padding_idx] = 0.0
        self.padding_idx = padding_idx
        self.add_param("weight", weight)

    def forward(self, ids):
        out = take(self.param("weight"), ids, axis=0)
        if self.padding_idx is not None:   # the row's value, with no gradient into it
            keep = api.expand_dims(api.not_equal(ids, self.padding_idx), -1)
            out = api.where(keep, out, stop_gradient(out))
        return out


__all__ = ["Conv1d", "Conv2d", "ConvTranspose2d", "MaxPool2d", "AvgPool2d",
           "AdaptiveAvgPool2d", "Flatten", "BatchNorm2d", "Embedding"]
