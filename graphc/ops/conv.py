"""Windows: the primitives under convolution and pooling, and those functions.

`window` gathers, for every output position of a convolution, the input values its kernel
covers: x (N, C, *S) -> (N, C, *K, *O), with strides, dilation, zero (or `fill`) padding on
either side (negative: cropping) and input dilation (the zeros a transposed convolution
inserts between input values). `window_adjoint` is its transpose (each input position sums
the window entries that read it). Both are linear, each one's VJP is the other, and both run
as gather kernels; the convolutions, poolings and their gradients are compositions of these
two, matmul, reshape and reductions, so every stage (shapes, numpy, VJPs, CPU and PTX code)
comes from that one place.

    conv:  cols = window(x) (N, C, *K, *O) -> (N, G, C/G * prod K, prod O);
           y = W (G, O/G, C/G * prod K) @ cols -> (N, O, *O)
    conv_transpose: the convolution of x dilated by the stride, padded by d (k - 1) - p,
           with the kernel flipped and its in/out channels swapped
    pools: a max or sum over the kernel axes of window(x)
"""
from __future__ import annotations

import itertools

import numpy as np

from ..errors import DTypeError, ShapeError
from ..ir.types import FLOATS, NUMERIC, Dim, TensorType, fmt_shape
from ..trace import Tensor, apply, as_tensor, constant, user_location
from .. import api as G
from .registry import CONV, GATHER, defop


# ------------------------------------------------------------------ sizes

def window_size(s, k: int, stride: int, dilation: int, lo: int, hi: int, ld: int = 1):
    """The number of window positions along one spatial axis of size s (an int or Dim)."""
    extent = dilation * (k - 1) + 1
    if isinstance(s, Dim):
        # stays a monomial only when the window keeps (or tiles) the axis
        if stride == 1 and lo + hi + 2 - ld - extent == 0:
            return s * ld
        if ld == 1 and lo + hi - extent + stride == 0:
            out = s.divide(stride)
            if out is not None:
                return out
        raise ValueError(f"the symbolic size {s} gives a window count that is not a symbolic "
                         f"size (kernel {k}, stride {stride}, dilation {dilation}, padding "
                         f"({lo}, {hi})); symbolic spatial sizes need stride 1 with 'same' "
                         f"padding, or windows that tile the axis")
    virtual = (s - 1) * ld + 1 + lo + hi if s > 0 else lo + hi
    if virtual < extent:
        raise ValueError(f"the kernel (extent {extent}) is larger than the padded input "
                         f"(size {virtual})")
    return (virtual - extent) // stride + 1


def _window_attrs(attrs):
    return (attrs["kernel"], attrs["stride"], attrs["dilation"], attrs["pad_lo"],
            attrs["pad_hi"], attrs["lhs_dilation"])


def entry_axes(r: int, channels_last: bool) -> tuple:
    """The window entries' axes, as positions in (N, C, *K, *O): as they are, or, with
    channels_last, (N, *O, C, *K) (each output position's entries contiguous: the im2col
    rows a convolution's matmul reads with the output positions as its rows)."""
    if not channels_last:
        return tuple(range(2 + 2 * r))
    return (0,) + tuple(2 + r + i for i in range(r)) + (1,) + tuple(2 + i for i in range(r))


def _canonical(coords, r, channels_last):
    """Coordinates in the entries' layout -> in (N, C, *K, *O)."""
    out = [None] * len(coords)
    for i, a in enumerate(entry_axes(r, channels_last)):
        out[a] = coords[i]
    return out


def _window_out(spatial, attrs):
    return tuple(window_size(s, *a) for s, *a in zip(spatial, *_window_attrs(attrs)))


def _check_window_input(x: TensorType, attrs):
    r = len(attrs["kernel"])
    if x.rank != r + 2:
        raise ValueError(f"a {r}-d window needs an (N, C, {r} spatial) input, got "
                         f"{fmt_shape(x.shape)}")
    if any(not isinstance(s, Dim) and s == 0 for s in x.shape[2:]):
        raise ValueError(f"the input {fmt_shape(x.shape)} has an empty spatial axis")


def _window_infer(types, fill, channels_last=False, **attrs):
    (x,) = types
    _check_window_input(x, attrs)
    shape = tuple(x.shape[:2]) + tuple(attrs["kernel"]) + _window_out(x.shape[2:], attrs)
    return TensorType(tuple(shape[a] for a in entry_axes(len(attrs["kernel"]), channels_last)),
                      x.dtype)


def _adjoint_infer(types, size, channels_last=False, **attrs):
    (g,) = types
    r = len(attrs["kernel"])
    if g.rank != 2 + 2 * r:
        raise ValueError(f"window entries {fmt_shape(g.shape)} do not have rank {2 + 2 * r}")
    canonical = _canonical(list(g.shape), r, channels_last)
    want = tuple(canonical[:2]) + tuple(attrs["kernel"]) + _window_out(size, attrs)
    if tuple(canonical) != want:
        raise ValueError(f"window entries {fmt_shape(g.shape)} do not fit the window shape "
                         f"{fmt_shape(want)}")
    return TensorType(tuple(canonical[:2]) + tuple(size), g.dtype)


def _positions(kernel, dilation):
    """(kernel index, its offset along each axis) for every kernel position."""
    for kk in itertools.product(*[range(k) for k in kernel]):
        yield kk, tuple(a * d for a, d in zip(kk, dilation))


def _virtual(shape, attrs):
    """Slices of the dilated, padded ("virtual") input that hold the input, and its shape;
    negative padding crops."""
    sizes, inner, crop = [], [], []
    for s, _, _, _, lo, hi, ld in zip(shape, *_window_attrs(attrs)):
        body = (s - 1) * ld + 1
        sizes.append(body + max(lo, 0) + max(hi, 0))
        inner.append(slice(max(lo, 0), max(lo, 0) + body, ld))
        crop.append(slice(-min(lo, 0), sizes[-1] - (-min(hi, 0))))
    return sizes, inner, crop


def _window_reference(x, fill, channels_last=False, **attrs):
    n, c, *spatial = x.shape
    out_sizes = _window_out(spatial, attrs)
    sizes, inner, crop = _virtual(spatial, attrs)
    xv = np.full((n, c, *sizes), fill, x.dtype)
    xv[(slice(None), slice(None), *inner)] = x
    xv = xv[(slice(None), slice(None), *crop)]
    out = np.empty((n, c, *attrs["kernel"], *out_sizes), x.dtype)
    for kk, off in _positions(attrs["kernel"], attrs["dilation"]):
        box = tuple(slice(a, a + (o - 1) * s + 1, s)
                    for a, o, s in zip(off, out_sizes, attrs["stride"]))
        out[(slice(None), slice(None), *kk)] = xv[(slice(None), slice(None), *box)]
    return np.ascontiguousarray(out.transpose(entry_axes(len(spatial), channels_last)))


def _adjoint_reference(g, size, channels_last=False, **attrs):
    r = len(size)
    g = g.transpose(np.argsort(entry_axes(r, channels_last)))   # to (N, C, *K, *O)
    n, c = g.shape[:2]
    out_sizes = _window_out(size, attrs)
    sizes, inner, crop = _virtual(size, attrs)
    full = np.zeros((n, c, *sizes), g.dtype)
    xv = full[(slice(None), slice(None), *crop)]
    for kk, off in _positions(attrs["kernel"], attrs["dilation"]):
        box = tuple(slice(a, a + (o - 1) * s + 1, s)
                    for a, o, s in zip(off, out_sizes, attrs["stride"]))
        xv[(slice(None), slice(None), *box)] += g[(slice(None), slice(None), *kk)]
    return np.ascontiguousarray(full[(slice(None), slice(None), *inner)])


def _source(ix, i, o_or_k, attrs):
    """(coordinate, validity conditions) of input axis i that window entry reads: o*s +
    k*d - lo in the virtual input, which holds input values at multiples of ld."""
    o, kk = o_or_k
    kernel, stride, dilation, lo, hi, ld = (a[i] for a in _window_attrs(attrs))
    p = ix.add(ix.mul(o, ix.const(stride)), ix.const(-lo)) if kk is None else \
        ix.add(ix.mul(o, ix.const(stride)), ix.add(ix.mul(kk, ix.const(dilation)),
                                                      ix.const(-lo)))
    conds = []
    if ld != 1:
        conds.append(ix.eq(ix.mod(p, ix.const(ld)), ix.const(0)))
        p = ix.div(p, ix.const(ld))
    size = ix.shape(0)[2 + i]
    if ld == 1 and lo <= 0:
        pass    # p = o s + k d - lo >= 0 always
    else:
        conds.append(ix.ge(p, ix.const(0)))
    out = window_size(size, kernel, stride, dilation, lo, hi, ld)
    if not (ld == 1 and isinstance(size, int) and isinstance(out, int) and
            (out - 1) * stride + (kernel - 1) * dilation - lo < size):
        conds.append(ix.lt(p, ix.size(size)))
    # (a check that always holds is left out: LLVM does not see it, and a guarded load in
    # a vectorized loop becomes a gather where a plain one is a strided load)
    return p, conds


def _window_gather(ix, coords, fill, channels_last=False, **attrs):
    r = len(attrs["kernel"])
    coords = _canonical(coords, r, channels_last)
    src, valid = list(coords[:2]), []
    for i in range(r):
        p, conds = _source(ix, i, (coords[2 + r + i], coords[2 + i]), attrs)
        src.append(p)
        valid += conds
    return ix.read(0, src, ix.all(valid), fill)


def _adjoint_gather(ix, coords, size, channels_last=False, **attrs):
    """x[i] = the sum of the window entries (k, o) with o*s + k*d - lo == i*ld, one guarded
    read per kernel position (o = (i*ld + lo - k*d) / s where that divides)."""
    r = len(attrs["kernel"])
    out_sizes = _window_out(size, attrs)
    if all(s == k and ld == 1 and lo >= 0 and d == 1 for s, k, ld, lo, d in zip(
            attrs["stride"], attrs["kernel"], attrs["lhs_dilation"], attrs["pad_lo"],
            attrs["dilation"])):
        # windows that tile the input (a 2x2 pooling): element i is entry (i + lo) mod s of
        # window (i + lo) div s, one read (not one guarded read per kernel position)
        src, kk, valid = list(coords[:2]), [], []
        for i in range(r):
            p = ix.add(coords[2 + i], ix.const(attrs["pad_lo"][i]))   # >= 0
            s = ix.const(attrs["stride"][i])
            kk.append(ix.b.srem(p, s))
            o = ix.b.sdiv(p, s)
            valid.append(ix.lt(o, ix.size(out_sizes[i])))
            src.append(o)
        entry = src[:2] + kk + src[2:]
        at = [entry[a] for a in entry_axes(r, channels_last)]
        return ix.read(0, at, ix.all(valid), 0.0)
    total = None
    for kk, off in _positions(attrs["kernel"], attrs["dilation"]):
        src, valid = list(coords[:2]) + [ix.const(a) for a in kk], []
        for i in range(r):
            s, lo, ld = attrs["stride"][i], attrs["pad_lo"][i], attrs["lhs_dilation"][i]
            p = ix.add(ix.mul(coords[2 + i], ix.const(ld)), ix.const(lo - off[i]))
            if s != 1:
                valid.append(ix.eq(ix.mod(p, ix.const(s)), ix.const(0)))
                p = ix.div(p, ix.const(s))
            valid += [ix.ge(p, ix.const(0)), ix.lt(p, ix.size(out_sizes[i]))]
            src.append(p)
        at = [src[a] for a in entry_axes(r, channels_last)]
        term = ix.read(0, at, ix.all(valid), 0.0)
        total = term if total is None else ix.e.add(total, term)
    return total


def _window_vjp(g, y, x, fill, **attrs):
    return [apply("window_adjoint", [g], size=tuple(x.shape[2:]), **attrs)]


def _adjoint_vjp(g, y, x, size, **attrs):
    return [apply("window", [g], fill=0.0, **attrs)]


window = defop("window", GATHER, arity=1, dtypes=NUMERIC, infer=_window_infer,
               reference=_window_reference, gather=_window_gather, vjp=_window_vjp,
               sliding_window=True,
               fix="check the kernel size, stride, padding and dilation against the input")
window_adjoint = defop("window_adjoint", GATHER, arity=1, dtypes=FLOATS, infer=_adjoint_infer,
                       reference=_adjoint_reference, gather=_adjoint_gather, vjp=_adjoint_vjp)


# ------------------------------------------------------------------ direct convolution
# conv_direct: out[n, o, h, w] = sum_{c, kh, kw} x[n, c, h sh + kh dh - lo, w sw + kw dw - lo]
# w[o, c, kh, kw]; zero padding (pad_lo, pad_hi per axis), groups 1, column stride 1 or 2: the
# kernel reads x and the weights in place (codegen/builder.build_conv), no window entries in
# memory.

def _direct_attrs(attrs):
    return dict(kernel=attrs["kernel"], stride=attrs.get("stride", (1, 1)),
                dilation=attrs["dilation"], pad_lo=attrs["pad_lo"], pad_hi=attrs["pad_hi"],
                lhs_dilation=(1, 1))


def _direct_infer(types, **attrs):
    x, w = types
    if x.rank != 4 or w.rank != 4 or x.shape[1] != w.shape[1] or \
            tuple(w.shape[2:]) != tuple(attrs["kernel"]) or x.dtype != w.dtype:
        raise ValueError(f"conv_direct: input {fmt_shape(x.shape)} and weight "
                         f"{fmt_shape(w.shape)} do not fit")
    out = _window_out(x.shape[2:], _direct_attrs(attrs))
    return TensorType((x.shape[0], w.shape[0]) + out, x.dtype)


def _direct_reference(x, w, **attrs):
    cols = _window_reference(x, fill=0.0, **_direct_attrs(attrs))   # (N, C, KH, KW, OH, OW)
    with np.errstate(all="ignore"):
        return np.ascontiguousarray(np.einsum("nckhyx,ockh->noyx", cols, w).astype(x.dtype))


def _direct_vjp(g, y, x, w, kernel, dilation, pad_lo, pad_hi, stride=(1, 1)):
    # dx: the convolution of g (dilated by the stride) with the flipped, transposed weights:
    # direct again for stride 1, else windows over the dilated g and a matmul
    back_lo = tuple(d * (k - 1) - p for k, d, p in zip(kernel, dilation, pad_lo))
    wt = G.transpose(flip(w, (2, 3)), (1, 0, 2, 3))
    if all(s == 1 for s in stride):
        back_hi = tuple(d * (k - 1) - p for k, d, p in zip(kernel, dilation, pad_hi))
        dx = apply("conv_direct", [g, wt], kernel=tuple(kernel), dilation=tuple(dilation),
                   pad_lo=back_lo, pad_hi=back_hi)
    else:
        # the dilated g's last row / column must land on x's: pad the rest at the end
        back_hi = tuple(n - 1 - (o - 1) * s + p for n, o, s, p in
                        zip(x.shape[2:], g.shape[2:], stride, pad_lo))
        dx = _conv_products(g, wt, kernel, (1, 1), dilation, back_lo, back_hi, 1,
                            "conv2d", ld=tuple(stride))
    # dw[o, (c, kh, kw)] = sum over (n, positions) of g * the window entries: one matmul
    attrs = _direct_attrs(dict(kernel=kernel, dilation=dilation, pad_lo=pad_lo,
                               pad_hi=pad_hi, stride=stride))
    rows = apply("window", [x], fill=0.0, channels_last=True, **attrs)  # (N, OH, OW, C, K..)
    n, o = x.shape[0], w.shape[0]
    ck = w.shape[1] * kernel[0] * kernel[1]
    gt = G.reshape(G.transpose(G.reshape(g, (n, o, -1)), (0, 2, 1)), (-1, o))
    dw = G.matmul(G.transpose(G.reshape(rows, (-1, ck)), (1, 0)), gt)       # (CK, O)
    return [dx, G.reshape(G.transpose(dw, (1, 0)), tuple(w.shape))]


conv_direct = defop("conv_direct", CONV, arity=2, dtypes=FLOATS, infer=_direct_infer,
                    reference=_direct_reference, vjp=_direct_vjp)


def _direct_ok(x, w, stride, groups, lo, hi, dilation, kernel) -> bool:
    """Where the direct kernel applies: one group, 2-d, a column stride of 1 or 2, padding
    that its gradient's convolution can express (at most the kernel's extent - 1 a side)."""
    return (groups == 1 and len(kernel) == 2 and stride[1] in (1, 2) and
            all(0 <= p <= d * (k - 1) for p, d, k in zip(lo + hi, dilation * 2, kernel * 2)))


# ------------------------------------------------------------------ arguments

def _tuple(value, r: int, what: str, fn: str, low: int = 1) -> tuple[int, ...]:
    vals = tuple(value) if isinstance(value, (tuple, list)) else (value,) * r
    if len(vals) != r or any(not isinstance(v, (int, np.integer)) or isinstance(v, bool) or
                             v < low for v in vals):
        raise ShapeError(f"{fn}: {what} must be an int >= {low} or {r} of them, got {value!r}",
                         op=fn, loc=user_location())
    return tuple(int(v) for v in vals)


def _float_input(x, fn: str) -> Tensor:
    x = as_tensor(x)
    if x.dtype not in FLOATS:
        raise DTypeError(f"{fn}: input dtype {x.dtype} is not a float", op=fn,
                         loc=user_location(), fix="convert with .astype('float32')")
    return x


def _rank(x: Tensor, r: int, fn: str, layout: str) -> None:
    if x.ndim != r + 2:
        raise ShapeError(f"{fn}: expected a {layout} input of rank {r + 2}, got shape "
                         f"{fmt_shape(x.shape)}", op=fn, loc=user_location(),
                         fix="add the batch axis with graphc.expand_dims(x, 0)"
                         if x.ndim == r + 1 else "")


def _gather_windows(x: Tensor, fn: str, kernel, stride, dilation, lo, hi, ld=None,
                    fill=0.0, channels_last=False) -> Tensor:
    r = len(kernel)
    return apply("window", [x], kernel=tuple(kernel), stride=tuple(stride),
                 dilation=tuple(dilation), pad_lo=tuple(lo), pad_hi=tuple(hi),
                 lhs_dilation=tuple(ld or (1,) * r), fill=float(fill),
                 channels_last=bool(channels_last))


def _padding(padding, r, kernel, dilation, stride, fn):
    """(lo, hi) per spatial axis from an int, a tuple, 'same', 'valid', or one (lo, hi) pair
    per spatial axis (padding on each side apart)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * r, (0,) * r
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ShapeError(f"{fn}: padding='same' needs stride 1, got {stride}", op=fn,
                                 loc=user_location())
            total = [d * (k - 1) for k, d in zip(kernel, dilation)]
            return tuple(t // 2 for t in total), tuple(t - t // 2 for t in total)
        raise ShapeError(f"{fn}: padding {padding!r} is not 'same', 'valid' or ints", op=fn,
                         loc=user_location())
    if _is_pairs(padding, r):
        return (_tuple([p[0] for p in padding], r, "padding", fn, low=0),
                _tuple([p[1] for p in padding], r, "padding", fn, low=0))
    pads = _tuple(padding, r, "padding", fn, low=0)
    return pads, pads


def _is_pairs(padding, r) -> bool:
    return isinstance(padding, (tuple, list)) and len(padding) == r and \
        all(isinstance(p, (tuple, list)) and len(p) == 2 for p in padding)


def _conv(x, w, b, stride, padding, dilation, groups, r: int, fn: str) -> Tensor:
    layout = ("NCL", "NCHW", "NCDHW")[r - 1]
    x, w = _float_input(x, fn), _float_input(w, fn)
    _rank(x, r, fn, layout)
    if w.ndim != r + 2:
        raise ShapeError(f"{fn}: weight must have rank {r + 2} (out, in/groups, kernel), got "
                         f"{fmt_shape(w.shape)}", op=fn, loc=user_location())
    if x.dtype != w.dtype:
        raise DTypeError(f"{fn}: input is {x.dtype}, weight {w.dtype}", op=fn,
                         loc=user_location(), fix="give both the same float dtype")
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
        raise ShapeError(f"{fn}: groups must be a positive int, got {groups!r}", op=fn,
                         loc=user_location())
    c_out, c_per_group, *kernel = w.shape
    if any(isinstance(d, Dim) for d in w.shape) or isinstance(x.shape[1], Dim):
        raise ShapeError(f"{fn}: channel counts and kernel sizes must be static", op=fn,
                         loc=user_location())
    c_in = x.shape[1]
    if c_in != c_per_group * groups or c_out % groups:
        raise ShapeError(f"{fn}: input has {c_in} channels; the weight {fmt_shape(w.shape)} "
                         f"with groups={groups} expects {c_per_group * groups} and "
                         f"out channels divisible by {groups}", op=fn, loc=user_location(),
                         fix="the weight is (out_channels, in_channels / groups, *kernel)")
    stride = _tuple(stride, r, "stride", fn)
    dilation = _tuple(dilation, r, "dilation", fn)
    lo, hi = _padding(padding, r, kernel, dilation, stride, fn)
    return _with_bias(fn, b, c_out, r, lambda: _conv_products(x, w, kernel, stride, dilation,
                                                              lo, hi, groups, fn))


def _with_bias(fn, b, c_out, r, products) -> Tensor:
    """products() (shape errors as the user's, at their line), plus the bias per channel."""
    try:
        y = products()
    except ShapeError as err:
        raise ShapeError(f"{fn}: {err.message}", op=fn, loc=user_location()) from None
    if b is not None:
        b = as_tensor(b)
        if tuple(b.shape) != (c_out,):
            raise ShapeError(f"{fn}: bias must have shape ({c_out},), got {fmt_shape(b.shape)}",
                             op=fn, loc=user_location())
        y = y + G.reshape(b, (c_out,) + (1,) * r)
    return y


def _conv_products(x, w, kernel, stride, dilation, lo, hi, groups, fn, ld=None) -> Tensor:
    """The convolution proper: the direct kernel where it applies (one group, 2-d),
    else one of three matmul shapes (measured in benchmarks/bench_models.py; the GEMM is
    fastest with many rows and few columns):
      groups == 1:   im2col rows (N, positions, C * prod K) @ W^T -> (N, positions, O),
                     then to (N, O, positions) (a transpose the bias / activation join);
      depthwise:     a sum over the kernel axes of window * w (one multiply-add per entry);
      other groups:  W (G, O/G, C/G * prod K) @ cols (N, G, C/G * prod K, positions).
    `ld`: the input dilation (a transposed convolution's stride)."""
    r = len(kernel)
    n, c_out, cg = x.shape[0], w.shape[0], w.shape[1]
    k = cg * int(np.prod(kernel))
    if ld is None and _direct_ok(x, w, stride, groups, lo, hi, dilation, kernel):
        return apply("conv_direct", [x, w], kernel=tuple(kernel), dilation=tuple(dilation),
                     pad_lo=tuple(lo), pad_hi=tuple(hi), stride=tuple(stride))
    if groups == 1:
        cols = _gather_windows(x, fn, kernel, stride, dilation, lo, hi, ld, channels_last=True)
        out_sizes = tuple(cols.shape[1:1 + r])
        rows = G.reshape(cols, (n, _prod(out_sizes), k))
        yt = G.matmul(rows, G.transpose(G.reshape(w, (c_out, k)), (1, 0)))
        return G.reshape(G.transpose(yt, (0, 2, 1)), (n, c_out) + out_sizes)
    cols = _gather_windows(x, fn, kernel, stride, dilation, lo, hi, ld)
    out_sizes = tuple(cols.shape[2 + r:])
    if cg == 1 and c_out == groups:      # depthwise: one filter per channel
        wk = G.reshape(w, (c_out,) + tuple(kernel) + (1,) * r)
        return G.sum(cols * wk, axis=tuple(range(2, 2 + r)))
    cols = G.reshape(cols, (n, groups, k, _prod(out_sizes)))
    y = G.matmul(G.reshape(w, (groups, c_out // groups, k)), cols)
    return G.reshape(y, (n, c_out) + out_sizes)


def _prod(sizes):
    out = 1
    for s in sizes:
        out = s * out if isinstance(s, Dim) else out * s
    return out


def conv(x, w, b=None, stride=1, padding=0, dilation=1, groups=1) -> Tensor:
    """conv1d / conv2d / conv3d by the rank of x (N, C_in, *spatial), w (C_out,
    C_in / groups, *kernel)."""
    r = as_tensor(x).ndim - 2
    if r not in (1, 2, 3):
        raise ShapeError(f"conv: x must have 1 to 3 spatial axes, got shape "
                         f"{fmt_shape(as_tensor(x).shape)}", op="conv", loc=user_location())
    return _conv(x, w, b, stride, padding, dilation, groups, r, f"conv{r}d")


def conv1d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1) -> Tensor:
    """torch.nn.functional.conv1d: x (N, C_in, L), w (C_out, C_in / groups, K)."""
    return _conv(x, w, b, stride, padding, dilation, groups, 1, "conv1d")


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1) -> Tensor:
    """torch.nn.functional.conv2d: x (N, C_in, H, W), w (C_out, C_in / groups, KH, KW);
    padding an int, a pair, "same", "valid" or ((top, bottom), (left, right)); groups ==
    C_in is a depthwise convolution.

        >>> y = graphc.conv2d(x, w, b, padding=1)          # 3x3, size-preserving
    """
    return _conv(x, w, b, stride, padding, dilation, groups, 2, "conv2d")


def conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, dilation=1,
                     groups=1) -> Tensor:
    """torch.nn.functional.conv_transpose2d: x (N, C_in, H, W), w (C_in, C_out / groups,
    KH, KW); the gradient of conv2d with respect to its input. padding: an int, a pair, or
    ((top, bottom), (left, right))."""
    _rank(as_tensor(x), 2, "conv_transpose2d", "NCHW")
    return conv_transpose(x, w, b, stride, padding, output_padding, dilation, groups)


def conv_transpose(x, w, b=None, stride=1, padding=0, output_padding=0, dilation=1,
                   groups=1) -> Tensor:
    """conv_transpose2d for 1 to 3 spatial axes (the rank of x (N, C_in, *spatial) - 2);
    w (C_in, C_out / groups, *kernel)."""
    x, w = as_tensor(x), as_tensor(w)
    r = x.ndim - 2
    fn = f"conv_transpose{r}d"
    if r not in (1, 2, 3):
        raise ShapeError(f"conv_transpose: x must have 1 to 3 spatial axes, got shape "
                         f"{fmt_shape(x.shape)}", op="conv_transpose", loc=user_location())
    x, w = _float_input(x, fn), _float_input(w, fn)
    if w.ndim != r + 2 or any(isinstance(d, Dim) for d in w.shape):
        raise ShapeError(f"{fn}: weight must be a static (in, out/groups, *kernel) tensor of "
                         f"rank {r + 2}, got {fmt_shape(w.shape)}", op=fn, loc=user_location())
    c_in, c_per_group, *kernel = w.shape
    if not isinstance(groups, (int, np.integer)) or groups < 1 or c_in % groups or \
            x.shape[1] != c_in:
        raise ShapeError(f"{fn}: input has {x.shape[1]} channels; the weight "
                         f"{fmt_shape(w.shape)} with groups={groups} expects {c_in} "
                         f"(divisible by groups)", op=fn, loc=user_location(),
                         fix="the weight is (in_channels, out_channels / groups, *kernel)")
    stride = _tuple(stride, r, "stride", fn)
    dilation = _tuple(dilation, r, "dilation", fn)
    if _is_pairs(padding, r):
        pad_lo = _tuple([p[0] for p in padding], r, "padding", fn, low=0)
        pad_hi = _tuple([p[1] for p in padding], r, "padding", fn, low=0)
    else:
        pad_lo = pad_hi = _tuple(padding, r, "padding", fn, low=0)
    extra = _tuple(output_padding, r, "output_padding", fn, low=0)
    if any(e >= max(s, d) for e, s, d in zip(extra, stride, dilation)):
        raise ShapeError(f"{fn}: output_padding {extra} must be smaller than the stride or "
                         f"the dilation", op=fn, loc=user_location())
    lo = tuple(d * (k - 1) - p for k, d, p in zip(kernel, dilation, pad_lo))
    hi = tuple(d * (k - 1) - p + e for k, d, p, e in zip(kernel, dilation, pad_hi, extra))
    cg = c_in // groups
    c_out = c_per_group * groups
    spatial = tuple(range(2, 2 + r))
    # the equivalent convolution's weight (G*og, cg, *K): flipped, in/out swapped per group
    wf = G.reshape(flip(w, spatial), (groups, cg, c_per_group) + tuple(kernel))
    wf = G.reshape(G.transpose(wf, (0, 2, 1) + tuple(a + 1 for a in spatial)),
                   (c_out, cg) + tuple(kernel))
    return _with_bias(fn, b, c_out, r, lambda: _conv_products(
        x, wf, kernel, (1,) * r, dilation, lo, hi, groups, fn, ld=stride))


def _flip_infer(types, axes):
    (x,) = types
    if any(not 0 <= a < x.rank for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"flip axes {axes} are not distinct axes of rank {x.rank}")
    return x


def _flip_gather(ix, coords, axes):
    shape = ix.shape(0)
    src = [ix.sub(ix.sub(ix.size(shape[i]), ix.const(1)), c) if i in axes else c
           for i, c in enumerate(coords)]
    return ix.read(0, src)


flip_op = defop("flip", GATHER, arity=1, dtypes=NUMERIC + ("bool",), infer=_flip_infer,
                reference=lambda x, axes: np.ascontiguousarray(np.flip(x, axes)),
                gather=_flip_gather, vjp=lambda g, y, x, axes: [apply("flip", [g], axes=axes)])


def flip(x, axis=None) -> Tensor:
    """numpy.flip: x with the order of its entries along `axis` (an int, a tuple, or None:
    every axis) reversed."""
    x = as_tensor(x)
    axes = tuple(range(x.ndim)) if axis is None else \
        tuple(a % x.ndim if -x.ndim <= a < x.ndim else a for a in
              (axis if isinstance(axis, (tuple, list)) else (axis,)))
    for a in axes:
        if not isinstance(a, (int, np.integer)) or not 0 <= a < x.ndim:
            raise ShapeError(f"flip: axis {a} is out of range for rank {x.ndim}", op="flip",
                             loc=user_location())
    return apply("flip", [x], axes=tuple(sorted(int(a) for a in axes))) if axes else x


# ------------------------------------------------------------------ pooling

def _pool_geometry(x, kernel_size, stride, padding, dilation, ceil_mode, fn):
    r = 2
    x = as_tensor(x)
    if x.ndim not in (3, 4):
        raise ShapeError(f"{fn}: expected an (N, C, H, W) or (C, H, W) input, got "
                         f"{fmt_shape(x.shape)}", op=fn, loc=user_location())
    kernel = _tuple(kernel_size, r, "kernel_size", fn)
    stride = kernel if stride is None or stride == () else _tuple(stride, r, "stride", fn)
    dilation = _tuple(dilation, r, "dilation", fn)
    pads = _tuple(padding, r, "padding", fn, low=0)
    if any(p > k // 2 for p, k in zip(pads, kernel)):
        raise ShapeError(f"{fn}: padding {pads} must be at most half the kernel size "
                         f"{kernel}", op=fn, loc=user_location())
    hi = list(pads)
    for i, s in enumerate(x.shape[-2:]):
        if ceil_mode and not isinstance(s, Dim):
            extent = dilation[i] * (kernel[i] - 1) + 1
            span = s + 2 * pads[i] - extent
            if span < 0:
                break
            out = -(-span // stride[i]) + 1
            if (out - 1) * stride[i] >= s + pads[i]:   # the last window starts in the padding
                out -= 1
            hi[i] = (out - 1) * stride[i] + extent - s - pads[i]
    return x, kernel, stride, dilation, pads, tuple(hi)


def _pool_windows(x, kernel, stride, dilation, lo, hi, fill, fn):
    batched = x.ndim == 4
    xb = x if batched else G.expand_dims(x, 0)
    try:
        cols = _gather_windows(xb, fn, kernel, stride, dilation, lo, hi, fill=fill)
    except ShapeError as err:
        raise ShapeError(f"{fn}: {err.message}", op=fn, loc=user_location()) from None
    return cols, batched


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False) -> Tensor:
    """torch.nn.functional.max_pool2d (padding counts as -inf; no indices returned)."""
    fn = "max_pool2d"
    x, kernel, stride, dilation, lo, hi = _pool_geometry(x, kernel_size, stride, padding,
                                                         dilation, ceil_mode, fn)
    if x.dtype == "bool":
        raise DTypeError(f"{fn}: bool input", op=fn, loc=user_location())
    fill = -np.inf if x.dtype in FLOATS else float(np.iinfo(x.dtype).min)
    cols, batched = _pool_windows(x, kernel, stride, dilation, lo, hi, fill, fn)
    y = G.max(cols, axis=(2, 3))
    return y if batched else G.squeeze(y, 0)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None) -> Tensor:
    """torch.nn.functional.avg_pool2d: the mean over each window; with count_include_pad the
    padding counts towards the divisor (never the extra cells ceil_mode adds)."""
    fn = "avg_pool2d"
    x = _float_input(x, fn)
    x, kernel, stride, dilation, lo, hi = _pool_geometry(x, kernel_size, stride, padding, 1,
                                                         ceil_mode, fn)
    cols, batched = _pool_windows(x, kernel, stride, dilation, lo, hi, 0.0, fn)
    total = G.sum(cols, axis=(2, 3))
    if divisor_override is not None:
        y = total / float(divisor_override)
    elif all(a == b == 0 for a, b in zip(lo, hi)) or (
            count_include_pad and tuple(lo) == tuple(hi)):
        y = total / float(np.prod(kernel))
    else:
        y = total / constant(_pool_counts(x.shape[-2:], kernel, stride, lo, hi,
                                          count_include_pad, x.dtype, fn))
    return y if batched else G.squeeze(y, 0)


def _pool_counts(spatial, kernel, stride, lo, hi, include_pad, dtype, fn):
    """How many cells of each window count: inside the input, or (include_pad) inside the
    input and its padding, never ceil_mode's extra cells."""
    if any(isinstance(s, Dim) for s in spatial):
        raise ShapeError(f"{fn}: padding or ceil_mode on a symbolic spatial size", op=fn,
                         loc=user_location(), fix="use static spatial sizes")
    inside = np.ones((1, 1, *spatial), dtype)
    attrs = dict(kernel=kernel, stride=stride, dilation=(1, 1), pad_lo=lo, pad_hi=hi,
                 lhs_dilation=(1, 1))
    if include_pad:   # the padded input counts; ceil_mode's extra cells beyond it do not
        inside = np.ones((1, 1, *(s + 2 * p for s, p in zip(spatial, lo))), dtype)
        attrs.update(pad_lo=(0, 0), pad_hi=tuple(h - p for h, p in zip(hi, lo)))
    counts = _window_reference(inside, fill=0.0, **attrs).sum(axis=(2, 3))
    return counts[0, 0]


def adaptive_avg_pool2d(x, output_size) -> Tensor:
    """torch.nn.functional.adaptive_avg_pool2d: output cell i averages input rows
    floor(i H / out) .. ceil((i + 1) H / out) - 1 (and the same for columns)."""
    fn = "adaptive_avg_pool2d"
    x = _float_input(x, fn)
    if x.ndim not in (3, 4):
        raise ShapeError(f"{fn}: expected an (N, C, H, W) or (C, H, W) input, got "
                         f"{fmt_shape(x.shape)}", op=fn, loc=user_location())
    sizes = output_size if isinstance(output_size, (tuple, list)) else (output_size,) * 2
    if len(sizes) != 2:
        raise ShapeError(f"{fn}: output_size must be an int or a pair, got {output_size!r}",
                         op=fn, loc=user_location())
    h, w = x.shape[-2:]
    sizes = tuple(s if s is not None else d for s, d in zip(sizes, (h, w)))
    if tuple(sizes) == (1, 1):
        return G.mean(x, axis=(-2, -1), keepdims=True)
    if any(not isinstance(s, (int, np.integer)) or s < 1 for s in sizes):
        raise ShapeError(f"{fn}: output sizes must be positive ints, got {output_size!r}",
                         op=fn, loc=user_location())
    if any(isinstance(d, Dim) for d in (h, w)):
        raise ShapeError(f"{fn}: output {sizes} of a symbolic spatial size (only 1x1 is "
                         f"supported)", op=fn, loc=user_location())
    if h % sizes[0] == 0 and w % sizes[1] == 0:
        k = (h // sizes[0], w // sizes[1])
        return avg_pool2d(x, k, k)
    # uneven windows: a linear map per axis, y = P_h x P_w^T
    ph = constant(_adaptive_matrix(h, sizes[0], x.dtype))
    pw = constant(_adaptive_matrix(w, sizes[1], x.dtype).T.copy())
    return G.matmul(G.matmul(ph, x), pw)


def _adaptive_matrix(n: int, out: int, dtype) -> np.ndarray:
    m = np.zeros((out, n), dtype)
    for i in range(out):
        a, b = (i * n) // out, -(-((i + 1) * n) // out)
        m[i, a:b] = 1.0 / (b - a)
    return m


__all__ = ["conv", "conv1d", "conv2d", "conv_transpose", "conv_transpose2d", "max_pool2d",
           "avg_pool2d", "adaptive_avg_pool2d", "flip", "window_size"]
