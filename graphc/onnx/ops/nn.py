"""Neural-network ONNX ops: matrix products, softmax, convolution, pooling, normalizations.

Convolutions are graphc.ops.conv's (conv / conv_transpose, padding given per side); pools are
a max or sum over the kernel axes of the `window` primitive (x (N, C, *S) -> (N, C, *K, *O)),
the primitive under graphc's own pools, for 1 to 3 spatial axes; Col2Im is its transpose
(window_adjoint), MaxUnpool a scatter_add, DeformConv bilinear gathers and a matmul.
"""
from __future__ import annotations

import numpy as np

from ... import api
from ...ir.types import FLOATS, Dim, numel
from ...ops import conv as conv_ops
from ...trace import apply, constant
from ..importer import onnx_op
from .common import axis_of


@onnx_op("MatMul")
def _matmul(node, a, b):
    return api.matmul(node.tensor(a), node.tensor(b))


@onnx_op("Gemm")
def _gemm(node, a, b, c=None):
    a, b = node.tensor(a), node.tensor(b)
    if node.attr("transA", 0):
        a = api.transpose(a, (1, 0))
    if node.attr("transB", 0):
        b = api.transpose(b, (1, 0))
    out = api.matmul(a, b)
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    if alpha != 1.0:
        out = out * alpha
    if c is not None:
        c = node.tensor(c, out.dtype)
        out = out + (c * beta if beta != 1.0 else c)
    return out


def _hardmax(x, axis):
    """1 at the first largest entry along `axis`, 0 elsewhere (x's dtype)."""
    axis = axis % x.ndim
    best = api.argmax(x, axis, keepdims=True)
    n = x.shape[axis]
    shape = tuple(n if i == axis else 1 for i in range(x.ndim))
    index = api.reshape(apply("iota", [], dtype="int64", shape=(n,)), shape)
    return api.astype(api.equal(index, best), x.dtype)


ROW_OPS = {"Softmax": api.softmax, "LogSoftmax": api.log_softmax, "Hardmax": _hardmax}


@onnx_op(*ROW_OPS)
def _softmax(node, x):
    fn = ROW_OPS[node.op_type]
    x = node.tensor(x)
    axis = node.attr("axis", -1 if node.opset >= 13 else 1)
    if node.opset >= 13:
        return fn(x, axis)
    # before opset 13: the input is flattened to 2-D at `axis`
    axis = axis % x.ndim
    shape = x.shape
    flat = api.reshape(x, (numel(shape[:axis]), numel(shape[axis:])))
    return api.reshape(fn(flat, -1), shape)


# ------------------------------------------------------------------ window geometry

def _spatial_ints(node, name: str, r: int, default: int) -> tuple[int, ...]:
    vals = node.attr(name)
    if vals is None or len(vals) == 0:
        return (default,) * r
    if len(vals) != r:
        raise node.error(f"{name} {list(vals)} has {len(vals)} entries for {r} spatial axes")
    return tuple(int(v) for v in vals)


def _same_padding(node, s, stride: int, extent: int, upper: bool) -> tuple[int, int]:
    """SAME_UPPER / SAME_LOWER: the output has ceil(s / stride) positions; the odd cell of
    padding goes at the end (UPPER) or the start (LOWER)."""
    if isinstance(s, Dim):
        if stride != 1:
            raise node.error(f"auto_pad SAME with stride {stride} on the symbolic spatial size "
                             f"{s}: the padding depends on the size",
                             fix="export with static spatial sizes, or explicit pads")
        total = extent - 1
    else:
        out = -(-s // stride)
        total = max(0, (out - 1) * stride + extent - s)
    small, big = total // 2, total - total // 2
    return (small, big) if upper else (big, small)


def _geometry(node, spatial, kernel):
    """(strides, dilations, pads before, pads after) of a Conv or pool node on `spatial`."""
    r = len(kernel)
    strides = _spatial_ints(node, "strides", r, 1)
    dilations = _spatial_ints(node, "dilations", r, 1)
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pairs = [_same_padding(node, s, st, d * (k - 1) + 1, auto_pad == "SAME_UPPER")
                 for s, st, d, k in zip(spatial, strides, dilations, kernel)]
        return strides, dilations, tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
    if auto_pad == "VALID":
        return strides, dilations, (0,) * r, (0,) * r
    if auto_pad != "NOTSET":
        raise node.error(f"auto_pad {auto_pad!r} is not NOTSET, SAME_UPPER, SAME_LOWER or "
                         f"VALID")
    pads = node.attr("pads")
    if pads is None or len(pads) == 0:
        pads = (0,) * (2 * r)
    if len(pads) != 2 * r:
        raise node.error(f"pads {list(pads)} must have 2 x {r} entries (all starts, then all "
                         f"ends)")
    if any(p < 0 for p in pads):
        raise node.error(f"negative pads {list(pads)}")
    return strides, dilations, tuple(int(p) for p in pads[:r]), tuple(int(p) for p in pads[r:])


def _ceil_padding(node, spatial, kernel, strides, dilations, lo, hi) -> tuple[int, ...]:
    """ceil_mode's end padding: one more window where a partial one remains, as long as it
    starts inside the input or its start padding."""
    out_hi = []
    for s, k, st, d, a, b in zip(spatial, kernel, strides, dilations, lo, hi):
        extent = d * (k - 1) + 1
        if isinstance(s, Dim):
            raise node.error(f"ceil_mode on the symbolic spatial size {s}",
                             fix="export with static spatial sizes")
        count = -(-(s + a + b - extent) // st) + 1
        if (count - 1) * st >= s + a:
            count -= 1
        out_hi.append(max(b, (count - 1) * st + extent - s - a))
    return tuple(out_hi)


def _kernel_shape(node, r: int, fallback=None) -> tuple[int, ...]:
    kernel = node.attr("kernel_shape")
    if kernel is None:
        if fallback is None:
            raise node.error("kernel_shape is required")
        return tuple(fallback)
    if len(kernel) != r:
        raise node.error(f"kernel_shape {list(kernel)} has {len(kernel)} entries for an input "
                         f"with {r} spatial axes")
    return tuple(int(k) for k in kernel)


def _spatial_rank(node, x, what="the input") -> int:
    r = x.ndim - 2
    if r < 1:
        raise node.error(f"{what} must be (N, C, *spatial), got shape {tuple(x.shape)}")
    return r


# ------------------------------------------------------------------ convolution

@onnx_op("Conv")
def _conv(node, x, w, b=None):
    x, w = node.tensor(x), node.tensor(w)
    r = _spatial_rank(node, x)
    if r > 3:
        raise node.error(f"{r} spatial axes; graphc convolves 1 to 3")
    kernel = tuple(w.shape[2:])
    if _kernel_shape(node, r, kernel) != kernel:
        raise node.error(f"kernel_shape {node.attr('kernel_shape')} differs from the weight's "
                         f"{kernel}")
    strides, dilations, lo, hi = _geometry(node, x.shape[2:], kernel)
    bias = None if b is None else node.tensor(b, x.dtype)
    return conv_ops.conv(x, node.tensor(w, x.dtype), bias, strides, tuple(zip(lo, hi)),
                         dilations, int(node.attr("group", 1)))


@onnx_op("ConvTranspose")
def _conv_transpose(node, x, w, b=None):
    x, w = node.tensor(x), node.tensor(w)
    r = _spatial_rank(node, x)
    kernel = tuple(w.shape[2:])
    if _kernel_shape(node, r, kernel) != kernel:
        raise node.error(f"kernel_shape {node.attr('kernel_shape')} differs from the weight's "
                         f"{kernel}")
    strides = _spatial_ints(node, "strides", r, 1)
    dilations = _spatial_ints(node, "dilations", r, 1)
    extra = _spatial_ints(node, "output_padding", r, 0)
    auto_pad = node.attr("auto_pad", "NOTSET")
    output_shape = node.attr("output_shape")
    spatial = x.shape[2:]
    if output_shape is not None and len(output_shape) > r:
        output_shape = output_shape[-r:]     # (N, C, *spatial) is accepted too
    if output_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if any(isinstance(s, Dim) for s in spatial):
            raise node.error(f"output_shape / auto_pad SAME on the symbolic spatial sizes "
                             f"{tuple(spatial)}", fix="export with static spatial sizes")
        want = list(output_shape) if output_shape else [s * st for s, st in zip(spatial,
                                                                                strides)]
        # the natural size minus the wanted one is padding to take (negative: to add)
        total = [st * (s - 1) + e + d * (k - 1) + 1 - o for s, st, e, d, k, o in
                 zip(spatial, strides, extra, dilations, kernel, want)]
        upper = auto_pad == "SAME_UPPER"
        lo = [t // 2 if upper else t - t // 2 for t in total]
        hi = [t - a for t, a in zip(total, lo)]
    else:
        _, _, lo, hi = _geometry(node, spatial, kernel)
    # padding below zero on a side adds output there (on the end side: output_padding)
    extra = [e - min(h, 0) for e, h in zip(extra, hi)]
    before = [-min(a, 0) for a in lo]
    lo, hi = [max(a, 0) for a in lo], [max(h, 0) for h in hi]
    bias = None if b is None else node.tensor(b, x.dtype)
    return _transpose_with_extra(x, node.tensor(w, x.dtype), bias, strides,
                                 tuple(zip(lo, hi)), before, extra, dilations,
                                 int(node.attr("group", 1)))


def _transpose_with_extra(x, w, bias, strides, padding, before, extra, dilations, groups):
    """conv_transpose; output added before the first position, or past what output_padding
    can reach (below the stride), reads no input: zeros, plus the bias."""
    fits = [min(e, max(s, d) - 1) for e, s, d in zip(extra, strides, dilations)]
    y = conv_ops.conv_transpose(x, w, None, strides, padding, fits, dilations, groups)
    rest = [e - f for e, f in zip(extra, fits)]
    if any(rest) or any(before):
        y = api.pad(y, [(0, 0), (0, 0)] + list(zip(before, rest)))
    if bias is not None:
        y = y + api.reshape(bias, (bias.shape[0],) + (1,) * (x.ndim - 2))
    return y


@onnx_op("DeformConv")
def _deform_conv(node, x, w, offset, b=None, mask=None):
    """A 2-D convolution whose kernel taps each move by their own offset per output
    position, read bilinearly (zeros outside the image) and scaled by `mask`:
    the four neighbours of every tap gathered from the flattened image, weighted, then the
    grouped matmul of an ordinary convolution."""
    from ...ops.indexing import take_along_axis
    x, w = node.tensor(x), node.tensor(w)
    if x.ndim != 4:
        raise node.error(f"graphc deforms 2-D convolutions; X has shape {tuple(x.shape)}")
    n, c, height, width = x.shape
    kernel = tuple(w.shape[2:])
    strides, dilations, lo, _ = _geometry(node, (height, width), kernel)
    offset = node.tensor(offset, x.dtype)
    out = tuple(offset.shape[2:])
    groups, offset_groups = int(node.attr("group", 1)), int(node.attr("offset_group", 1))
    if any(isinstance(d, Dim) for d in (c, height, width) + out) or c % offset_groups or \
            c % groups or w.shape[0] % groups:
        raise node.error(f"X {tuple(x.shape)}, W {tuple(w.shape)}, offset "
                         f"{tuple(offset.shape)}: static channels and sizes, divisible by "
                         f"group={groups} and offset_group={offset_groups}, are needed")
    taps, positions = int(np.prod(kernel)), int(np.prod(out))
    shift = api.reshape(offset, (n, offset_groups) + kernel + (2,) + out)
    rows = np.arange(kernel[0]).reshape(-1, 1, 1, 1) * dilations[0] - lo[0] + \
        np.arange(out[0]).reshape(1, 1, -1, 1) * strides[0]
    cols = np.arange(kernel[1]).reshape(1, -1, 1, 1) * dilations[1] - lo[1] + \
        np.arange(out[1]).reshape(1, 1, 1, -1) * strides[1]
    ys = shift[:, :, :, :, 0] + constant(rows.astype(x.dtype))    # (N, G, kH, kW, oH, oW)
    xs = shift[:, :, :, :, 1] + constant(cols.astype(x.dtype))
    scale = api.broadcast_to(constant(np.ones((), x.dtype)), tuple(ys.shape)) \
        if mask is None else api.reshape(node.tensor(mask, x.dtype), tuple(ys.shape))
    image = api.reshape(x, (n, offset_groups, c // offset_groups, height * width))
    y0, x0 = _floor(ys), _floor(xs)
    sampled = None
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        yy, xx = y0 + float(dy), x0 + float(dx)
        weight = (1.0 - api.abs(ys - yy)) * (1.0 - api.abs(xs - xx)) * scale
        inside = api.logical_and(
            api.logical_and(api.greater_equal(yy, 0.0), api.less(yy, float(height))),
            api.logical_and(api.greater_equal(xx, 0.0), api.less(xx, float(width))))
        weight = api.where(inside, weight, weight * 0.0)
        at = api.clip(yy, 0.0, float(height - 1)) * float(width) + \
            api.clip(xx, 0.0, float(width - 1))
        at = api.reshape(api.astype(at, "int64"), (n, offset_groups, 1, taps * positions))
        values = take_along_axis(image, api.broadcast_to(
            at, (n, offset_groups, c // offset_groups, taps * positions)), 3)
        term = values * api.reshape(weight, (n, offset_groups, 1, taps * positions))
        sampled = term if sampled is None else sampled + term
    per_group = (c // groups) * taps
    cols = api.reshape(sampled, (n, groups, per_group, positions))
    y = api.matmul(api.reshape(node.tensor(w, x.dtype), (groups, w.shape[0] // groups,
                                                         per_group)), cols)
    y = api.reshape(y, (n, w.shape[0]) + out)
    if b is not None:
        y = y + api.reshape(node.tensor(b, x.dtype), (w.shape[0], 1, 1))
    return y


def _floor(v):
    """floor of a float tensor: the truncation, one less where that rounded up."""
    t = api.astype(api.astype(v, "int64"), v.dtype)
    return api.where(api.greater(t, v), t - 1.0, t)


@onnx_op("CausalConvWithState")
def _causal_conv(node, x, w, b=None, past=None):
    """A depthwise 1-D convolution over the past state (zeros if none) followed by x, no
    padding, optionally SiLU; also returns the last kernel - 1 steps as the next state."""
    x = node.tensor(x)
    activation = node.attr("activation", "none")
    if activation not in ("none", "silu", "swish"):
        raise node.error(f"activation {activation!r} is not none, silu or swish")
    w = node.tensor(w, x.dtype)
    if x.ndim != 3 or w.ndim != 3:
        raise node.error(f"input {tuple(x.shape)} and weight {tuple(w.shape)} must be "
                         f"(batch, channels, length) and (channels, 1, kernel)")
    n, c, length = x.shape
    k = w.shape[2]
    past = api.zeros((n, c, k - 1), x.dtype) if past is None else node.tensor(past, x.dtype)
    joined = api.concatenate([past, x], 2) if k > 1 else x
    y = conv_ops.conv(joined, w, None if b is None else node.tensor(b, x.dtype),
                      groups=int(c))
    if activation != "none":
        y = y * api.sigmoid(y)
    return y, joined[:, :, joined.shape[2] - (k - 1):]


@onnx_op("Col2Im")
def _col2im(node, x, image_shape, block_shape):
    """Sums each column of blocks back into the image: the transpose (window_adjoint) of the
    window gather a convolution reads, x (N, C * prod(block), L) -> (N, C, *image)."""
    x = node.tensor(x)
    image = tuple(node.static_ints(image_shape, "image_shape"))
    block = tuple(node.static_ints(block_shape, "block_shape"))
    r = len(image)
    strides = _spatial_ints(node, "strides", r, 1)
    dilations = _spatial_ints(node, "dilations", r, 1)
    pads = node.attr("pads") or [0] * (2 * r)
    lo, hi = tuple(int(p) for p in pads[:r]), tuple(int(p) for p in pads[r:])
    n, rows, _ = x.shape
    taps = int(np.prod(block))
    if len(block) != r or isinstance(rows, Dim) or rows % taps:
        raise node.error(f"input {tuple(x.shape)} with block_shape {list(block)} and "
                         f"image_shape {list(image)}: the rows must be C x prod(block)")
    out = tuple(conv_ops.window_size(s, k, st, d, a, b) for s, k, st, d, a, b in
                zip(image, block, strides, dilations, lo, hi))
    cols = api.reshape(x, (n, rows // taps) + block + out)
    return apply("window_adjoint", [cols], size=image, kernel=block, stride=strides,
                 dilation=dilations, pad_lo=lo, pad_hi=hi, lhs_dilation=(1,) * r,
                 channels_last=False)


# ------------------------------------------------------------------ pooling

def _windows(x, kernel, strides, dilations, lo, hi, fill):
    return apply("window", [x], kernel=tuple(kernel), stride=tuple(strides),
                 dilation=tuple(dilations), pad_lo=tuple(lo), pad_hi=tuple(hi),
                 lhs_dilation=(1,) * len(kernel), fill=float(fill), channels_last=False)


def _pool_setup(node, x):
    x = node.tensor(x)
    r = _spatial_rank(node, x)
    kernel = _kernel_shape(node, r)
    strides, dilations, lo, hi = _geometry(node, x.shape[2:], kernel)
    ends = hi
    if node.attr("ceil_mode", 0):
        ends = _ceil_padding(node, x.shape[2:], kernel, strides, dilations, lo, hi)
    return x, r, kernel, strides, dilations, lo, hi, ends


@onnx_op("MaxPool")
def _max_pool(node, x):
    x, r, kernel, strides, dilations, lo, _, ends = _pool_setup(node, x)
    if x.dtype == "bool":
        raise node.error("bool input")
    fill = -np.inf if x.dtype in FLOATS else float(np.iinfo(x.dtype).min)
    cols = _windows(x, kernel, strides, dilations, lo, ends, fill)
    kernel_axes = tuple(range(2, 2 + r))
    y = api.max(cols, axis=kernel_axes)
    if node.num_outputs < 2 or not node.proto.output[1]:
        return y
    return y, _max_indices(node, x, cols, kernel, strides, dilations, lo, ends)


def _max_indices(node, x, cols, kernel, strides, dilations, lo, ends):
    """MaxPool's Indices: the flat index into x of each window's (first) maximum; row-major
    over (N, C, *spatial), or with storage_order=1 column-major over the spatial axes."""
    from ...ops.indexing import take_along_axis
    r = len(kernel)
    spatial = tuple(x.shape[2:])
    if any(isinstance(s, Dim) for s in spatial + (x.shape[1],)):
        raise node.error("Indices with symbolic channel or spatial sizes",
                         fix="export with static sizes, or drop the Indices output")
    order = "F" if node.attr("storage_order", 0) else "C"
    where = np.arange(numel(spatial), dtype=np.int64).reshape(spatial, order=order)
    # a window of positions, gathered as the values were (padding never holds a maximum)
    at = _windows(constant(where.reshape((1, 1) + spatial)), kernel, strides, dilations,
                  lo, ends, -1)
    n, c = x.shape[0], x.shape[1]
    n_k, out = int(np.prod(kernel)), tuple(cols.shape[2 + r:])
    flat = api.reshape(cols, (n, c, n_k) + out)
    best = api.argmax(flat, axis=2, keepdims=True)
    at = api.broadcast_to(api.reshape(at, (1, 1, n_k) + out), (n, c, n_k) + out)
    idx = api.squeeze(take_along_axis(at, best, 2), 2)
    plane = int(numel(spatial))
    images = apply("iota", [], dtype="int64", shape=(n,))
    base = api.reshape(images * (c * plane), (n, 1) + (1,) * r)
    base = base + constant(np.arange(c, dtype=np.int64).reshape((1, c) + (1,) * r) * plane)
    return idx + base


@onnx_op("MaxUnpool")
def _max_unpool(node, x, indices, output_shape=None):
    """Zeros with x's values written at MaxPool's flat Indices (row-major over the pooled
    input's shape (N, C, *spatial), inferred from the pool's attributes; an output_shape
    pads or crops that at the end of each axis, as ONNX's reference). A position two windows
    picked gets its value once: the sum of the writes divided by their count."""
    x = node.tensor(x)
    r = _spatial_rank(node, x)
    kernel = _kernel_shape(node, r)
    strides, _, lo, hi = _geometry(node, x.shape[2:], kernel)
    spatial = tuple((s - 1) * st + k - a - b for s, st, k, a, b in
                    zip(x.shape[2:], strides, kernel, lo, hi))
    if any(isinstance(s, Dim) for s in tuple(x.shape[1:]) + spatial):
        raise node.error("symbolic channel or spatial sizes", fix="export with static sizes")
    n, c = x.shape[0], x.shape[1]
    plane, inner = int(numel(spatial)), int(numel(x.shape[2:]))
    images = apply("iota", [], dtype="int64", shape=(n,))
    base = api.reshape(images * (c * plane), (n, 1, 1)) + \
        constant(np.arange(c, dtype=np.int64).reshape(1, c, 1) * plane)
    at = api.reshape(node.tensor(indices, "int64"), (n, c, inner)) - base
    values = api.reshape(x, (n, c, inner))
    sums = apply("scatter_add", [values, at], axis=2, size=plane, along=True)
    ones = api.broadcast_to(constant(np.ones((), x.dtype)), tuple(values.shape))
    counts = apply("scatter_add", [ones, at], axis=2, size=plane, along=True)
    out = api.reshape(sums / api.maximum(counts, 1.0), (n, c) + spatial)
    if output_shape is None:
        return out
    want = node.static_ints(output_shape, "output_shape")[2:]
    if len(want) != r:
        raise node.error(f"output_shape {want} does not have {r} spatial sizes")
    out = out[(slice(None), slice(None)) + tuple(slice(0, w) for w in want)]
    return api.pad(out, [(0, 0), (0, 0)] + [(0, max(w - s, 0)) for w, s in zip(want, spatial)])


@onnx_op("AveragePool")
def _average_pool(node, x):
    x, r, kernel, strides, dilations, lo, hi, ends = _pool_setup(node, x)
    if x.dtype not in FLOATS:
        raise node.error(f"input dtype {x.dtype} is not a float")
    cols = _windows(x, kernel, strides, dilations, lo, ends, 0.0)
    total = api.sum(cols, axis=tuple(range(2, 2 + r)))
    include_pad = bool(node.attr("count_include_pad", 0))
    if all(a == b == 0 for a, b in zip(lo, ends)) or (include_pad and tuple(hi) == tuple(ends)):
        return total / float(np.prod(kernel))
    return total / _window_counts(node, x, kernel, strides, dilations, lo, hi, ends,
                                  include_pad)


def _window_counts(node, x, kernel, strides, dilations, lo, hi, ends, include_pad):
    """How many cells of each window count: those of the input, or (include_pad) those of
    the input and its explicit padding, never ceil_mode's extra end cells. The cells that
    count are a box, so the count is a product of one count per axis."""
    spatial = tuple(x.shape[2:])
    if any(isinstance(s, Dim) for s in spatial):
        raise node.error(f"padding or ceil_mode on the symbolic spatial sizes {spatial}",
                         fix="export with static spatial sizes")
    counts = np.ones((), np.float64)
    for s, k, st, d, a, b, e in zip(spatial, kernel, strides, dilations, lo, hi, ends):
        extent = d * (k - 1) + 1
        n_out = (s + a + e - extent) // st + 1
        cells = np.arange(n_out)[:, None] * st + np.arange(k)[None, :] * d - a
        first, stop = (-a, s + b) if include_pad else (0, s)
        per_axis = ((cells >= first) & (cells < stop)).sum(axis=1)
        counts = np.multiply.outer(counts, per_axis)
    return constant(counts.astype(x.dtype))


@onnx_op("LpPool")
def _lp_pool(node, x):
    """(sum over each window of |x|^p)^(1/p); padding adds nothing."""
    x, r, kernel, strides, dilations, lo, _, ends = _pool_setup(node, x)
    if x.dtype not in FLOATS:
        raise node.error(f"input dtype {x.dtype} is not a float")
    p = float(node.attr("p", 2))
    powered = x * x if p == 2.0 else api.power(api.abs(x), p)
    total = api.sum(_windows(powered, kernel, strides, dilations, lo, ends, 0.0),
                    axis=tuple(range(2, 2 + r)))
    return api.sqrt(total) if p == 2.0 else api.power(total, 1.0 / p)


@onnx_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(node, x):
    x = node.tensor(x)
    axes = tuple(range(2, 2 + _spatial_rank(node, x)))
    if node.op_type == "GlobalAveragePool":
        return api.mean(x, axes, keepdims=True)
    return api.max(x, axes, keepdims=True)


# ------------------------------------------------------------------ normalization

@onnx_op("BatchNormalization")
def _batch_norm(node, x, scale, bias, mean, var):
    x = node.tensor(x)
    eps = float(node.attr("epsilon", 1e-5))
    if node.attr("spatial", 1) != 1:
        raise node.error("spatial=0 (statistics per channel and position)",
                         fix="re-export the model at opset 9 or later")
    training = node.attr("training_mode", 0) if node.opset >= 14 else node.num_outputs > 1
    if training and node.opset < 14:
        raise node.error("training outputs before opset 14 (mean, var, saved statistics)",
                         fix="re-export the model at opset 14 or later")
    scale, bias = node.tensor(scale, x.dtype), node.tensor(bias, x.dtype)
    mean, var = node.tensor(mean, x.dtype), node.tensor(var, x.dtype)
    if not training:
        return api.batch_norm(x, mean, var, scale, bias, eps=eps)
    axes = tuple(a for a in range(x.ndim) if a != 1)
    batch_mean = api.mean(x, axes)
    d = x - api.reshape(batch_mean, (x.shape[1],) + (1,) * (x.ndim - 2))
    batch_var = api.mean(d * d, axes)
    y = api.batch_norm(x, batch_mean, batch_var, scale, bias, eps=eps)
    momentum = float(node.attr("momentum", 0.9))
    return (y, mean * momentum + batch_mean * (1.0 - momentum),
            var * momentum + batch_var * (1.0 - momentum))


@onnx_op("LayerNormalization")
def _layer_norm(node, x, scale, bias=None):
    """Normalizes over the axes from `axis` on; Mean and InvStdDev keep them as size 1."""
    x = node.tensor(x)
    axis = axis_of(int(node.attr("axis", -1)), x.ndim, node)
    eps = float(node.attr("epsilon", 1e-5))
    stash = {1: "float32", 11: "float64"}.get(int(node.attr("stash_type", 1)))
    if stash is None:
        raise node.error(f"stash_type {node.attr('stash_type')} is not FLOAT or DOUBLE")
    axes = tuple(range(axis, x.ndim))
    xs = x if x.dtype == stash else x.astype(stash)
    mu = api.mean(xs, axes, keepdims=True)
    d = xs - mu
    inv_std = api.rsqrt(api.mean(d * d, axes, keepdims=True) + eps)
    y = (d * inv_std).astype(x.dtype) if x.dtype != stash else d * inv_std
    y = y * node.tensor(scale, x.dtype)
    if bias is not None:
        y = y + node.tensor(bias, x.dtype)
    return y, mu, inv_std


def _normalized(x, axes, eps):
    """(x - mean) / sqrt(var + eps) over `axes` (biased variance)."""
    d = x - api.mean(x, axes, keepdims=True)
    return d * api.rsqrt(api.mean(d * d, axes, keepdims=True) + eps)


def _per_channel(node, v, x, what):
    v = node.tensor(v, x.dtype)
    if tuple(v.shape) != (x.shape[1],):
        raise node.error(f"{what} has shape {tuple(v.shape)}, not ({x.shape[1]},) (one per "
                         f"channel of the input {tuple(x.shape)})")
    return api.reshape(v, (x.shape[1],) + (1,) * (x.ndim - 2))


@onnx_op("InstanceNormalization")
def _instance_norm(node, x, scale, bias):
    x = node.tensor(x)
    axes = tuple(range(2, 2 + _spatial_rank(node, x)))
    y = _normalized(x, axes, float(node.attr("epsilon", 1e-5)))
    return y * _per_channel(node, scale, x, "scale") + _per_channel(node, bias, x, "B")


@onnx_op("GroupNormalization")
def _group_norm(node, x, scale, bias):
    """Statistics per (image, group of channels); scale and bias per channel (opset 21), or
    per group (opset 18)."""
    x = node.tensor(x)
    _spatial_rank(node, x)
    groups = int(node.attr("num_groups"))
    n, c = x.shape[0], x.shape[1]
    if isinstance(c, Dim) or c % groups:
        raise node.error(f"{c} channels do not split into num_groups={groups}")
    grouped = api.reshape(x, (n, groups, c // groups) + tuple(x.shape[2:]))
    stash = x.dtype if int(node.attr("stash_type", 1)) != 1 else "float32"
    if grouped.dtype != stash:
        grouped = grouped.astype(stash)
    y = _normalized(grouped, tuple(range(2, grouped.ndim)), float(node.attr("epsilon", 1e-5)))
    y = api.reshape(y.astype(x.dtype) if y.dtype != x.dtype else y, tuple(x.shape))
    scale, bias = node.tensor(scale, x.dtype), node.tensor(bias, x.dtype)
    if tuple(scale.shape) == (groups,) and groups != c:      # opset 18: one per group
        scale = api.reshape(api.broadcast_to(api.reshape(scale, (groups, 1)),
                                             (groups, c // groups)), (c,))
        bias = api.reshape(api.broadcast_to(api.reshape(bias, (groups, 1)),
                                            (groups, c // groups)), (c,))
    return y * _per_channel(node, scale, x, "scale") + _per_channel(node, bias, x, "bias")


@onnx_op("RMSNormalization")
def _rms_norm(node, x, scale):
    """x / sqrt(mean(x^2) + epsilon) * scale over the axes from `axis` on."""
    x = node.tensor(x)
    axis = axis_of(int(node.attr("axis", -1)), x.ndim, node)
    xs = x if x.dtype == "float32" or int(node.attr("stash_type", 1)) != 1 else \
        x.astype("float32")
    axes = tuple(range(axis, x.ndim))
    y = xs * api.rsqrt(api.mean(xs * xs, axes, keepdims=True) +
                       float(node.attr("epsilon", 1e-5)))
    if y.dtype != x.dtype:
        y = y.astype(x.dtype)
    return y * node.tensor(scale, x.dtype)


@onnx_op("MeanVarianceNormalization")
def _mean_variance_norm(node, x):
    x = node.tensor(x)
    axes = tuple(axis_of(int(a), x.ndim, node) for a in node.attr("axes", [0, 2, 3]))
    return _normalized(x, axes, 0.0)


@onnx_op("LpNormalization")
def _lp_norm(node, x):
    """x divided by its L1 or L2 norm along `axis` (0 where the norm is 0)."""
    x = node.tensor(x)
    axis = axis_of(int(node.attr("axis", -1)), x.ndim, node)
    p = int(node.attr("p", 2))
    if p not in (1, 2):
        raise node.error(f"p={p}; LpNormalization takes p = 1 or 2")
    norm = api.sum(api.abs(x), axis, keepdims=True) if p == 1 else \
        api.sqrt(api.sum(x * x, axis, keepdims=True))
    zero = api.equal(norm, 0.0)
    return api.where(zero, x * 0.0, x / api.where(zero, 1.0, norm))


@onnx_op("LRN")
def _lrn(node, x):
    """x / (bias + alpha / size * (sum of x^2 over `size` neighbouring channels))^beta: the
    channel sums are a window along C (the spatial axes flattened beside it)."""
    x = node.tensor(x)
    _spatial_rank(node, x)
    size = int(node.attr("size"))
    alpha, beta = float(node.attr("alpha", 1e-4)), float(node.attr("beta", 0.75))
    bias = float(node.attr("bias", 1.0))
    n, c = x.shape[0], x.shape[1]
    rows = api.reshape(x * x, (n, 1, c, numel(x.shape[2:])))
    cols = _windows(rows, (size, 1), (1, 1), (1, 1), ((size - 1) // 2, 0),
                    (size // 2, 0), 0.0)
    square_sum = api.reshape(api.sum(cols, axis=(2, 3)), tuple(x.shape))
    return x / api.power(square_sum * (alpha / size) + bias, beta)
