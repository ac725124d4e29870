"""Sampling ONNX ops: GridSample (an input read at computed coordinates: nearest, linear or
cubic taps gathered from the flattened input, each weighted), AffineGrid (the coordinates
an affine map gives a regular grid) and RoiAlign (bilinear samples pooled per bin)."""
from __future__ import annotations

import itertools

import numpy as np

from ... import api
from ...ir.types import Dim
from ...ops.indexing import take, take_along_axis
from ...trace import constant
from ..importer import onnx_op


def _floor(v):
    """floor of a float tensor: the truncation, one less where that rounded up."""
    t = api.astype(api.astype(v, "int64"), v.dtype)
    return api.where(api.greater(t, v), t - 1.0, t)


def _truncate(v):
    return api.astype(api.astype(v, "int64"), v.dtype)


def _round_half_even(v):
    """numpy.rint."""
    f = _floor(v)
    d = v - f
    odd = f - 2.0 * _floor(f * 0.5)
    return api.where(api.greater(d, 0.5), f + 1.0,
                     api.where(api.less(d, 0.5), f, f + odd))


def _reflect(v, lo: float, hi: float):
    """v folded back into [lo, hi] by reflections at its ends (ONNX's reference rule)."""
    span = hi - lo

    def fold(dx, near, far):
        n = _truncate(dx / span)
        r = dx - n * span
        even = api.equal(n - 2.0 * _floor(n * 0.5), 0.0)
        return api.where(even, near, far), r

    below, above = api.less(v, lo), api.greater(v, hi)
    (pick_lo, r_lo) = fold(lo - v, 1.0, -1.0)
    (pick_hi, r_hi) = fold(v - hi, -1.0, 1.0)
    from_lo = api.where(api.greater(pick_lo, 0.0), lo + r_lo, hi - r_lo)
    from_hi = api.where(api.less(pick_hi, 0.0), hi - r_hi, lo + r_hi)
    return api.where(below, from_lo, api.where(above, from_hi, v))


def _cubic(t):
    a = -0.75
    return [((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
            ((a + 2) * t - (a + 3)) * t * t + 1,
            ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
            ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a]


def _taps(mode, x):
    """(offset from the first tap's index, weight) per tap along one axis, and the first
    tap's index."""
    if mode == "nearest":
        return x, [None]       # one tap of weight 1
    base = _floor(x)
    t = x - base
    if mode == "linear":
        return base, [1.0 - t, t]
    return base - 1.0, _cubic(t)


@onnx_op("GridSample")
def _grid_sample(node, x, grid):
    x = node.tensor(x)
    grid = node.tensor(grid, x.dtype)
    r = x.ndim - 2
    mode = node.attr("mode", "linear")
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)    # opset 16's names
    padding = node.attr("padding_mode", "zeros")
    if mode not in ("nearest", "linear", "cubic") or \
            padding not in ("zeros", "border", "reflection"):
        raise node.error(f"mode {mode!r} / padding_mode {padding!r}: GridSample takes "
                         f"nearest, linear or cubic, and zeros, border or reflection")
    align = bool(node.attr("align_corners", 0))
    n, c, dims = x.shape[0], x.shape[1], tuple(x.shape[2:])
    out = tuple(grid.shape[1:-1])
    if r < 1 or grid.ndim != r + 2 or grid.shape[-1] != r:
        raise node.error(f"grid {tuple(grid.shape)} must be (N, *output, {r}) for the "
                         f"input {tuple(x.shape)}")
    if any(isinstance(d, Dim) for d in dims + out + (c,)):
        raise node.error("symbolic channel, input or output sizes",
                         fix="export with static sizes")
    points = int(np.prod(out))
    flat_grid = api.reshape(grid, (n, points, r))
    borders = [(0.0, d - 1.0) if align else (-0.5, d - 0.5) for d in dims]
    coords = []
    for axis, d in enumerate(dims):     # the grid's last axis lists x (width) first
        g = flat_grid[:, :, r - 1 - axis]
        v = (g + 1.0) * (0.5 * (d - 1)) if align else ((g + 1.0) * d - 1.0) * 0.5
        if mode == "nearest":
            v = _round_half_even(v)
        lo, hi = borders[axis]
        outside = api.logical_or(api.less(v, lo), api.greater(v, hi))
        if padding == "border":
            v = api.where(outside, api.clip(v, 0.0, d - 1.0), v)
        elif padding == "reflection":
            v = api.where(outside, _reflect(v, lo, hi), v)
        if mode == "nearest":
            v = _truncate(v)
        coords.append(_taps(mode, v))
    image = api.reshape(x, (n, c, int(np.prod(dims))))
    total = None
    per_axis = [range(len(w)) for _, w in coords]
    for combo in itertools.product(*per_axis):
        flat, weight = None, None
        for axis, k in enumerate(combo):
            first, weights = coords[axis]
            i, valid = _index(first + float(k), dims[axis], padding, borders[axis])
            w = weights[k]
            if valid is not None:
                w = api.astype(valid, x.dtype) if w is None else \
                    api.where(valid, w, w * 0.0)
            if w is not None:
                weight = w if weight is None else weight * w
            stride = int(np.prod(dims[axis + 1:]))
            part = i * stride if stride != 1 else i
            flat = part if flat is None else flat + part
        at = api.broadcast_to(api.expand_dims(flat, 1), (n, c, points))
        term = take_along_axis(image, at, 2)
        if weight is not None:
            term = term * api.expand_dims(weight, 1)
        total = term if total is None else total + term
    return api.reshape(total, (n, c) + out)


def _index(i, size, padding, border):
    """A tap's (int64 index into the axis, whether it reads the input: None for always)."""
    if padding == "zeros":
        valid = api.logical_and(api.greater_equal(i, 0.0), api.less(i, float(size)))
        i = api.clip(i, 0.0, size - 1.0)
    elif padding == "border":
        valid, i = None, api.clip(i, 0.0, size - 1.0)
    else:
        valid, i = None, api.clip(_truncate(_reflect(i, *border)), 0.0, size - 1.0)
    return api.astype(i, "int64"), valid


@onnx_op("AffineGrid")
def _affine_grid(node, theta, size):
    """theta (N, r, r + 1) applied to the regular grid of size[2:] in [-1, 1] (cell centres,
    or with align_corners the corners): (N, *size[2:], r), x (the last axis) first."""
    theta = node.tensor(theta)
    dims = node.static_ints(size, "size")[2:]
    r = len(dims)
    if r not in (2, 3) or tuple(theta.shape[1:]) != (r, r + 1):
        raise node.error(f"theta {tuple(theta.shape)} and size {dims}: (N, 2, 3) with 2-D "
                         f"sizes or (N, 3, 4) with 3-D ones")
    align = bool(node.attr("align_corners", 0))
    axes = [np.linspace(-1.0, 1.0, d) if align else (2.0 * np.arange(d) + 1.0) / d - 1.0
            for d in dims]
    mesh = np.meshgrid(*axes, indexing="ij")
    homogeneous = np.stack([m.reshape(-1) for m in reversed(mesh)] +
                           [np.ones(int(np.prod(dims)))], axis=1)     # (points, r + 1)
    grid = api.matmul(constant(homogeneous.astype(theta.dtype)),
                      api.transpose(theta, (0, 2, 1)))                # (N, points, r)
    return api.reshape(grid, (theta.shape[0],) + tuple(dims) + (r,))


def _roi_axis(start, size, bins: int, samples: int, length: int):
    """Along one image axis, per ROI (R,): each (bin, sample) point's low and high pixel,
    its fraction past the low one, and whether it lies near enough the image to count
    (ONNX's RoiAlign rule: within [-1, length]); shapes (R, bins, samples)."""
    step = size / float(bins)
    where = (np.arange(bins).reshape(bins, 1) + (np.arange(samples) + 0.5).reshape(1, samples)
             / samples)
    v = api.reshape(start, (-1, 1, 1)) + api.reshape(step, (-1, 1, 1)) * \
        constant(where.astype(start.dtype))
    near = api.logical_and(api.greater_equal(v, -1.0), api.less_equal(v, float(length)))
    v = api.maximum(v, 0.0)
    low = _truncate(v)
    last = api.greater_equal(low, length - 1.0)
    low = api.where(last, low * 0.0 + (length - 1.0), low)
    v = api.where(last, low, v)
    high = api.where(last, low, low + 1.0)
    return api.astype(low, "int64"), api.astype(high, "int64"), v - low, near


@onnx_op("RoiAlign")
def _roi_align(node, x, rois, batch_indices):
    """Each ROI's (output_height, output_width) bins, each the mean (or max) of
    sampling_ratio^2 bilinear samples: the four neighbours gathered from the ROI's image."""
    x = node.tensor(x)
    rois = node.tensor(rois, x.dtype)
    samples = int(node.attr("sampling_ratio", 0))
    if samples <= 0:
        raise node.error("sampling_ratio=0 (as many samples as the ROI's size, which the "
                         "ROIs' values set)", fix="export with a fixed sampling_ratio")
    mode = node.attr("mode", "avg")
    half_pixel = node.attr("coordinate_transformation_mode", "half_pixel") == "half_pixel"
    scale = float(node.attr("spatial_scale", 1.0))
    bins_h, bins_w = int(node.attr("output_height", 1)), int(node.attr("output_width", 1))
    n, c, height, width = x.shape
    if any(isinstance(d, Dim) for d in (c, height, width)):
        raise node.error("symbolic channel or image sizes", fix="export with static sizes")
    shift = 0.5 if half_pixel else 0.0
    corners = [rois[:, i] * scale - shift for i in range(4)]      # x1, y1, x2, y2
    size_w, size_h = corners[2] - corners[0], corners[3] - corners[1]
    if not half_pixel:
        size_w, size_h = api.maximum(size_w, 1.0), api.maximum(size_h, 1.0)
    y_low, y_high, ly, near_y = _roi_axis(corners[1], size_h, bins_h, samples, height)
    x_low, x_high, lx, near_x = _roi_axis(corners[0], size_w, bins_w, samples, width)

    def grid(t_y, t_x):        # (R, bins_h, s) and (R, bins_w, s) -> (R, points)
        full = api.reshape(t_y, (-1, bins_h, samples, 1, 1)) * \
            api.reshape(t_x, (-1, 1, 1, bins_w, samples))
        return api.reshape(full, (-1, bins_h * samples * bins_w * samples))

    def at(t_y, t_x):
        full = api.reshape(t_y * width, (-1, bins_h, samples, 1, 1)) + \
            api.reshape(t_x, (-1, 1, 1, bins_w, samples))
        return api.reshape(full, (-1, bins_h * samples * bins_w * samples))

    near = grid(api.astype(near_y, x.dtype), api.astype(near_x, x.dtype))
    images = take(api.reshape(x, (n, c, height * width)),
                  node.tensor(batch_indices, "int64"), axis=0)        # (R, C, H * W)
    points = bins_h * samples * bins_w * samples
    taps = []
    for index, weight in ((at(y_low, x_low), grid(1.0 - ly, 1.0 - lx)),
                          (at(y_low, x_high), grid(1.0 - ly, lx)),
                          (at(y_high, x_low), grid(ly, 1.0 - lx)),
                          (at(y_high, x_high), grid(ly, lx))):
        where = api.broadcast_to(api.expand_dims(index, 1), (rois.shape[0], c, points))
        taps.append(take_along_axis(images, where, 2) * api.expand_dims(weight * near, 1))
    shape = (rois.shape[0], c, bins_h, samples, bins_w, samples)
    if mode == "avg":
        total = api.reshape(taps[0] + taps[1] + taps[2] + taps[3], shape)
        return api.sum(total, axis=(3, 5)) / float(samples * samples)
    if mode != "max":
        raise node.error(f"mode {mode!r} is not avg or max")
    # ONNX's (and onnxruntime's) max mode: the largest weighted neighbour per sample
    best = api.maximum(api.maximum(taps[0], taps[1]), api.maximum(taps[2], taps[3]))
    return api.max(api.reshape(best, shape), axis=(3, 5))
