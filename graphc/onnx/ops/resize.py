"""ONNX Resize (and the deprecated Upsample), CenterCropPad.

Resize: per resized axis, a static interpolation matrix built at import (nearest, linear,
cubic, antialiased; every coordinate transformation mode), applied along that axis (a take
for nearest, a matmul otherwise). Resizing is separable, so N-d is one axis at a time, as in
ONNX's reference.
"""
from __future__ import annotations

import math

import numpy as np

from ... import api
from ...ir.types import Dim
from ...ops.indexing import take
from ...trace import constant
from ..importer import onnx_op

_TRANSFORMS = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
               "asymmetric", "tf_crop_and_resize")


def _source_coordinates(mode, n_in, n_out, scale, roi):
    """Each output position's coordinate in the input, and whether it falls outside it
    (tf_crop_and_resize only)."""
    y = np.arange(n_out, dtype=np.float64)
    width = scale * n_in
    outside = np.zeros(n_out, bool)
    if mode == "align_corners":
        x = np.zeros(n_out) if width == 1 else y * (n_in - 1) / (width - 1)
    elif mode == "asymmetric":
        x = y / scale
    elif mode == "tf_crop_and_resize":
        lo, hi = roi
        x = np.full(n_out, (hi - lo) * (n_in - 1) / 2) if width == 1 else \
            y * (hi - lo) * (n_in - 1) / (width - 1)
        x = x + lo * (n_in - 1)
        outside = (x < 0) | (x > n_in - 1)
    elif mode == "pytorch_half_pixel":
        x = np.full(n_out, -0.5) if width == 1 else (y + 0.5) / scale - 0.5
    elif mode == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    else:   # half_pixel_symmetric
        offset = n_in / 2 * (1 - n_out / width)
        x = offset + (y + 0.5) / scale - 0.5
    return x, outside


def _nearest(ratio, rule):
    """Whether to take the upper of the two neighbours, at fraction `ratio` in (0, 1]."""
    if ratio == 1.0:
        return True
    return {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5,
            "floor": False, "ceil": True}[rule]


def _cubic(ratio, a):
    r = ratio
    return np.array([((a * (r + 1) - 5 * a) * (r + 1) + 8 * a) * (r + 1) - 4 * a,
                     ((a + 2) * r - (a + 3)) * r * r + 1,
                     ((a + 2) * (1 - r) - (a + 3)) * (1 - r) * (1 - r) + 1,
                     ((a * (2 - r) - 5 * a) * (2 - r) + 8 * a) * (2 - r) - 4 * a])


def _cubic_antialias(ratio, scale, a):
    scale = min(scale, 1.0)

    def kernel(t):
        t = abs(t)
        if t <= 1:
            return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
        return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a if t < 2 else 0.0
    start = int(np.floor(-2 / scale) + 1)
    c = np.array([kernel(scale * (i - ratio)) for i in range(start, 2 - start)])
    return c / c.sum()


def _linear_antialias(ratio, scale):
    scale = min(scale, 1.0)
    start = int(np.floor(-1 / scale) + 1)
    c = np.clip(1 - np.abs((np.arange(start, 2 - start) - ratio) * scale), 0, 1)
    return c / c.sum()


def _coefficients(node, ratio, scale):
    """The weights of the neighbours of one output position (an even count, the fraction
    `ratio` in (0, 1] past the one left of the middle)."""
    mode = node.attr("mode", "nearest")
    antialias = bool(node.attr("antialias", 0))
    a = float(node.attr("cubic_coeff_a", -0.75))
    if mode == "nearest":
        upper = _nearest(ratio, node.attr("nearest_mode", _default_rounding(node)))
        return np.array([0.0, 1.0]) if upper else np.array([1.0, 0.0])
    if mode == "linear":
        return _linear_antialias(ratio, scale) if antialias else np.array([1 - ratio, ratio])
    return _cubic_antialias(ratio, scale, a) if antialias else _cubic(ratio, a)


def _since_11(node) -> bool:
    """Resize-11's coordinate rules (half_pixel, round_prefer_floor), not Resize-10's and
    Upsample's (asymmetric, floor)."""
    return node.opset >= 11 and node.op_type == "Resize"


def _default_rounding(node):
    return "round_prefer_floor" if _since_11(node) else "floor"


def _axis_matrix(node, n_in, n_out, scale, roi):
    """(M (n_out, n_in), outside (n_out,)): output = M @ input along the axis, and the
    extrapolation value where `outside`."""
    mode = node.attr("coordinate_transformation_mode",
                     "half_pixel" if _since_11(node) else "asymmetric")
    if mode not in _TRANSFORMS:
        raise node.error(f"coordinate_transformation_mode {mode!r} is not one of "
                         f"{', '.join(_TRANSFORMS)}")
    x, outside = _source_coordinates(mode, n_in, n_out, scale, roi)
    matrix = np.zeros((n_out, n_in))
    exclude = bool(node.attr("exclude_outside", 0))
    for o, xo in enumerate(x):
        if outside[o]:
            continue
        base = math.floor(xo)
        if xo == base:      # an exact position counts as fraction 1 past its left neighbour
            base -= 1
        c = np.asarray(_coefficients(node, xo - base, scale), np.float64)
        start = base - len(c) // 2 + 1
        at = np.arange(start, start + len(c))
        if exclude:
            c = np.where((at < 0) | (at >= n_in), 0.0, c)
            c = c / (c.sum() or 1.0)
        np.add.at(matrix[o], np.clip(at, 0, n_in - 1), c)
    return matrix, outside


def _targets(node, shape, roi, scales, sizes):
    """Per axis (output size, scale factor, roi pair)."""
    r = len(shape)
    axes = node.attr("axes")
    axes = list(range(r)) if not axes else [a % r for a in axes]
    roi = None if roi is None or np.asarray(roi).size == 0 else \
        [float(v) for v in np.asarray(roi).reshape(-1)]
    full_roi = [(0.0, 1.0)] * r
    if roi is not None:
        for i, a in enumerate(axes):
            full_roi[a] = (roi[i], roi[len(axes) + i])
    out = [(s, 1.0) for s in shape]
    if sizes is not None and len(sizes):
        # an axis kept at its (maybe symbolic) size has the factor 1
        factors = {a: 1.0 if sizes[i] == shape[a] else _ratio(node, sizes[i], shape[a], a)
                   for i, a in enumerate(axes)}
        policy = node.attr("keep_aspect_ratio_policy", "stretch")
        if policy == "stretch":
            for i, a in enumerate(axes):
                out[a] = (sizes[i], factors[a])
        elif policy in ("not_larger", "not_smaller"):
            scale = (min if policy == "not_larger" else max)(factors.values())
            for a in axes:
                out[a] = (int(scale * _static(node, shape[a], a) + 0.5), scale)
        else:
            raise node.error(f"keep_aspect_ratio_policy {policy!r} is not stretch, "
                             f"not_larger or not_smaller")
    elif scales is not None and np.asarray(scales).size:
        values = [float(v) for v in np.asarray(scales).reshape(-1)]
        for i, a in enumerate(axes):
            if values[i] != 1.0:
                out[a] = (int(values[i] * _static(node, shape[a], a)), values[i])
    else:
        raise node.error("neither scales nor sizes is given")
    return [(n, s, full_roi[a]) for a, (n, s) in enumerate(out)]


def _static(node, size, axis):
    if isinstance(size, Dim):
        raise node.error(f"axis {axis} is resized but its size {size} is symbolic",
                         fix="export with static sizes on the resized axes")
    return size


def _ratio(node, want, size, axis):
    if isinstance(want, Dim) or isinstance(size, Dim):
        raise node.error(f"axis {axis} is resized from {size} to {want}; graphc needs both "
                         f"sizes static", fix="export with static sizes on the resized axes")
    return want / size


@onnx_op("Resize", "Upsample")
def _resize(node, x, roi=None, scales=None, sizes=None):
    """Resize; Upsample (deprecated) is Resize-10: (X, scales), scales an attribute before
    opset 9."""
    if node.op_type == "Upsample" and roi is None:
        roi = np.asarray(node.attr("scales", []), np.float32)
    if node.opset < 11 or node.op_type == "Upsample":        # (X, scales)
        roi, scales, sizes = None, roi, None
    x = node.tensor(x)
    roi = node.known(roi, "roi")
    scales = node.known(scales, "scales")
    sizes = None if sizes is None else node.ints(sizes, "sizes")
    targets = _targets(node, [s if isinstance(s, Dim) else int(s) for s in x.shape], roi,
                       scales, sizes)
    fill = float(node.attr("extrapolation_value", 0.0))
    y = x
    for axis, (n_out, scale, axis_roi) in enumerate(targets):
        n_in = x.shape[axis]
        if math.isclose(scale, 1.0) and n_out == n_in and axis_roi == (0.0, 1.0):
            continue
        _static(node, n_in, axis)
        matrix, outside = _axis_matrix(node, n_in, n_out, scale, axis_roi)
        y = _along(y, axis, matrix, outside, fill)
    return y


def _along(x, axis, matrix, outside, fill):
    """The matrix applied along one axis (a take where each row is one 1), then the fill
    where outside."""
    picks = np.count_nonzero(matrix, axis=1) == 1
    if picks.all() and np.allclose(matrix.max(axis=1), 1.0):
        y = take(x, constant(matrix.argmax(axis=1).astype(np.int64)), axis=axis)
    else:
        moved = api.transpose(x, tuple(a for a in range(x.ndim) if a != axis) + (axis,))
        y = api.matmul(moved, constant(matrix.T.astype(x.dtype)))
        back = list(range(x.ndim - 1))
        back.insert(axis, x.ndim - 1)
        y = api.transpose(y, tuple(back))
    if outside.any():
        shape = (1,) * axis + (len(outside),) + (1,) * (x.ndim - axis - 1)
        mask = constant(outside.reshape(shape))
        y = api.where(mask, constant(np.full((), fill, x.dtype)), y)
    return y


@onnx_op("CenterCropPad")
def _center_crop_pad(node, x, shape):
    """Each listed axis cropped or zero-padded to its target size about its centre (the odd
    cell on the end side)."""
    x = node.tensor(x)
    want = node.static_ints(shape, "shape")
    axes = node.attr("axes") or list(range(x.ndim))
    if len(axes) != len(want):
        raise node.error(f"shape {want} does not give one size per axis {list(axes)}")
    index, widths = [slice(None)] * x.ndim, [(0, 0)] * x.ndim
    for a, size in zip(axes, want):
        a %= x.ndim
        have = _static(node, x.shape[a], a)
        if size < have:
            start = (have - size) // 2
            index[a] = slice(start, start + size)
        elif size > have:
            before = (size - have) // 2
            widths[a] = (before, size - have - before)
    y = x[tuple(index)]
    return api.pad(y, widths) if any(w != (0, 0) for w in widths) else y
