"""graphc: a static-graph compiler for numerical models (trace -> fuse -> LLVM -> native)."""
from . import ops as _ops  # noqa: F401  (fills the op registry)
from .api import (abs, add, astype, broadcast_to, concatenate, cos, divide, equal, erf, exp,
                  expand_dims, floor_divide, sin,
                  gelu, greater, greater_equal, less, less_equal, log, log_softmax, logical_and,
                  logical_not, logical_or, matmul, max, maximum, mean, min, minimum, multiply,
                  negative, not_equal, one_hot, power, relu, reshape, rsqrt, sigmoid, softmax,
                  sqrt, squeeze, subtract, sum, tanh, transpose, var, where, zeros,
                  random_uniform, argmax, argmin, cumsum, softplus, clip, triu, tril, layer_norm,
                  batch_norm, pad)
from .ops.attention import scaled_dot_product_attention
from .ops.einsum import einsum
from .ops.conv import (adaptive_avg_pool2d, avg_pool2d, conv1d, conv2d, conv_transpose2d,
                       flip, max_pool2d)
from .ops.indexing import take, take_along_axis
from .errors import (CompileError, DTypeError, GradError, GraphcError, InputError, ShapeError,
                     TraceError)
from .ir.graph import Graph
from .ir.types import Dim, dim
from .autodiff import grad, stop_gradient, value_and_grad
from .ops.control import scan
from .compiler import Compiled, compile  # noqa: A004
from .reference import evaluate
from .trace import Tensor, TensorSpec, constant, tensor, trace
from graphc_runtime import get_num_threads, set_num_threads

from . import nn, onnx, optim, tree  # noqa: E402, F401  (public modules)

__version__ = "0.1.0"

__all__ = [
    "tensor", "dim", "trace", "compile", "evaluate", "constant", "Graph", "Tensor", "TensorSpec",
    "Dim", "Compiled", "grad", "value_and_grad", "stop_gradient", "scan", "zeros", "random_uniform",
    "abs", "add", "astype", "broadcast_to", "concatenate", "divide", "equal", "exp", "expand_dims",
    "floor_divide",
    "erf", "sin", "cos", "argmax", "argmin", "cumsum", "softplus", "clip", "triu", "tril",
    "layer_norm", "batch_norm", "pad", "conv1d", "conv2d", "conv_transpose2d", "max_pool2d",
    "avg_pool2d", "adaptive_avg_pool2d", "flip", "take", "take_along_axis",
    "gelu", "greater", "greater_equal", "less", "less_equal", "log", "log_softmax", "logical_and",
    "logical_not", "logical_or", "matmul", "max", "maximum", "mean", "min", "minimum", "multiply",
    "negative", "not_equal", "one_hot", "power", "relu", "reshape", "rsqrt", "sigmoid", "softmax",
    "sqrt", "squeeze", "subtract", "sum", "tanh", "transpose", "var", "where",
    "GraphcError", "TraceError", "ShapeError", "DTypeError", "GradError", "CompileError",
    "InputError", "set_num_threads", "get_num_threads", "tree",
    "scaled_dot_product_attention", "einsum",
]

