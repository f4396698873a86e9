"""What a traced graph may hold when it is stored as data: named torch functions, tensor methods and standard module
types from fixed allow-lists, and plain argument values.

A converted model is saved as a list of nodes that name their operation (`torch.cat`, `F.relu`, `Tensor.view`, a
module path) and encode their arguments as JSON. Loading resolves each name in these tables and nowhere else, so a
file can only ever call pure tensor operations: no code is stored, executed or unpickled. Each name also has a
channel rule in `dslim.models.convert.channels`; a name without one is still runnable but pins the channels it touches.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import nn

from dslim.errors import UserError

# -- functions ----------------------------------------------------------------------------------------------------
_TORCH = """abs acos add addcmul addcdiv amax amin arange argmax argmin asin atan atan2 bernoulli bmm cat ceil chunk
clamp clamp_max clamp_min clip concat concatenate cos cosh cumprod cumsum div einsum empty empty_like eq erf exp expm1
flatten flip floor fmod full full_like ge gt hardshrink isfinite isnan layer_norm le lerp log log1p log2 log_softmax
logsumexp lt matmul max maximum mean min minimum mm movedim mul narrow ne neg norm ones ones_like permute pow prod rand
rand_like randn randn_like reciprocal relu reshape roll round rsqrt sigmoid sign sin sinh softmax split sqrt square
squeeze stack std sub sum swapaxes t tanh tensor_split tile transpose trunc unbind unflatten unsqueeze var where zeros
zeros_like baddbmm addmm conv2d conv_transpose2d batch_norm group_norm channel_shuffle pixel_shuffle pixel_unshuffle
adaptive_avg_pool2d avg_pool2d max_pool2d""".split()
_FUNCTIONAL = """relu relu6 leaky_relu elu selu celu gelu silu mish hardswish hardsigmoid hardtanh sigmoid tanh softplus
softsign logsigmoid softmax log_softmax dropout dropout2d alpha_dropout avg_pool2d max_pool2d adaptive_avg_pool2d
adaptive_max_pool2d interpolate upsample pad conv2d conv_transpose2d linear batch_norm layer_norm group_norm normalize
channel_shuffle pixel_shuffle pixel_unshuffle glu prelu""".split()
_OPERATOR = """add sub mul truediv floordiv mod pow neg pos abs matmul getitem iadd isub imul itruediv eq ne lt le gt
ge""".split()

FUNCTIONS: dict[str, object] = {
    **{f"torch.{n}": getattr(torch, n) for n in _TORCH if hasattr(torch, n)},
    **{f"F.{n}": getattr(F, n) for n in _FUNCTIONAL if hasattr(F, n)},
    **{f"operator.{n}": getattr(operator, n) for n in _OPERATOR},
    "math.sqrt": math.sqrt,
    "math.ceil": math.ceil,
    "math.floor": math.floor,
    "builtins.getattr": getattr,
    "torch._assert": torch._assert,  # torchvision's traceable assertions
    "builtins.int": int,
    "builtins.float": float,
}
"""Functions a stored graph may call, by the name it stores."""

_NAME_OF: dict[int, str] = {}


def function_name(fn: object) -> str | None:
    """The stored name of an allowed function, or None."""
    if not _NAME_OF:
        for name, f in FUNCTIONS.items():
            _NAME_OF.setdefault(id(f), name)
    return _NAME_OF.get(id(fn))


METHODS = frozenset(
    """abs add add_ addcmul amax amin bernoulli bernoulli_ chunk clamp clamp_ contiguous cumsum detach div div_ dim
    exp expand expand_as flatten flip float floor floor_ gelu mean mul mul_ narrow neg numel permute pow relu relu_
    repeat reshape reshape_as roll rsqrt sigmoid sigmoid_ size softmax split sqrt squeeze std sub sub_ sum t tanh
    tensor_split transpose type_as unbind unflatten unsqueeze var view view_as max min matmul bmm mm new_zeros
    new_ones new_empty new_full hardswish hardsigmoid clone maximum minimum log log_softmax square sign round
    masked_fill uniform_ normal_ fill_ zero_ swapaxes movedim tile norm logsumexp""".split()
)
"""Tensor methods a stored graph may call."""

ATTRIBUTES = frozenset({"shape", "dtype", "device", "ndim", "T"})
"""Tensor attributes a stored graph may read (`builtins.getattr`)."""


# -- modules -------------------------------------------------------------------------------------------------------
_MODULE_ARGS: dict[type, tuple[str, ...]] = {
    nn.Identity: (),
    nn.ReLU: ("inplace",),
    nn.ReLU6: ("inplace",),
    nn.LeakyReLU: ("negative_slope", "inplace"),
    nn.ELU: ("alpha", "inplace"),
    nn.SELU: ("inplace",),
    nn.CELU: ("alpha", "inplace"),
    nn.GELU: ("approximate",),
    nn.SiLU: ("inplace",),
    nn.Mish: ("inplace",),
    nn.Hardswish: ("inplace",),
    nn.Hardsigmoid: ("inplace",),
    nn.Hardtanh: ("min_val", "max_val", "inplace"),
    nn.Sigmoid: (),
    nn.Tanh: (),
    nn.Softplus: ("beta", "threshold"),
    nn.Softmax: ("dim",),
    nn.LogSoftmax: ("dim",),
    nn.Dropout: ("p", "inplace"),
    nn.Dropout1d: ("p", "inplace"),
    nn.Dropout2d: ("p", "inplace"),
    nn.AlphaDropout: ("p", "inplace"),
    nn.Flatten: ("start_dim", "end_dim"),
    nn.Unflatten: ("dim", "unflattened_size"),
    nn.MaxPool2d: ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode"),
    nn.AvgPool2d: ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    nn.AdaptiveAvgPool2d: ("output_size",),
    nn.AdaptiveMaxPool2d: ("output_size", "return_indices"),
    nn.Upsample: ("size", "scale_factor", "mode", "align_corners"),
    nn.ZeroPad2d: ("padding",),
    nn.ConstantPad2d: ("padding", "value"),
    nn.ReflectionPad2d: ("padding",),
    nn.ReplicationPad2d: ("padding",),
    nn.ChannelShuffle: ("groups",),
    nn.PixelShuffle: ("upscale_factor",),
    nn.PixelUnshuffle: ("downscale_factor",),
}
PLAIN_MODULES: dict[str, type] = {cls.__name__: cls for cls in _MODULE_ARGS}
"""Parameter-free standard modules a stored graph may hold, rebuilt from their constructor arguments."""

LAYER_TYPES = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)
"""Standard modules with weights that become slimmable layers."""


def module_args(m: nn.Module, where: str) -> dict:
    """The constructor arguments of an allowed parameter-free module, as JSON values."""
    names = _MODULE_ARGS.get(type(m))
    if names is None:
        raise UserError(
            f"{where}: dslim cannot store a {type(m).__module__}.{type(m).__name__} as data; use standard "
            f"layers (Conv2d, Linear, BatchNorm, LayerNorm, activations, pooling) or torch functions"
        )
    return {n: encode(getattr(m, n)) for n in names}


def build_plain(kind: str, args: dict) -> nn.Module:
    """A parameter-free standard module from its stored type name and arguments."""
    if kind not in PLAIN_MODULES:
        raise UserError(f"unknown module type {kind!r} in a stored graph")
    return PLAIN_MODULES[kind](**{k: decode(v) for k, v in args.items()})


# -- argument values -----------------------------------------------------------------------------------------------
_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64,
                                                      torch.int64, torch.int32, torch.bool, torch.uint8)}  # fmt: skip
_FORMATS = {"contiguous_format": torch.contiguous_format, "channels_last": torch.channels_last,
            "preserve_format": torch.preserve_format}  # fmt: skip


class Ref:
    """A reference to another node's value inside encoded arguments."""

    def __init__(self, name: str) -> None:
        self.name = name


def encode(value: object, ref=None) -> object:  # type: ignore[no-untyped-def]
    """A JSON form of an argument value; `ref(node)` names a node (fx nodes inside arguments)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, (tuple, torch.Size)):
        return {"tuple": [encode(v, ref) for v in value]}
    if isinstance(value, list):
        return [encode(v, ref) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: encode(v, ref) for k, v in value.items()}}
    if isinstance(value, slice):
        return {"slice": [encode(value.start, ref), encode(value.stop, ref), encode(value.step, ref)]}
    if value is Ellipsis:
        return {"ellipsis": True}
    if isinstance(value, torch.dtype) and str(value).removeprefix("torch.") in _DTYPES:
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.memory_format):
        return {"format": next(k for k, v in _FORMATS.items() if v == value)}
    if ref is not None:
        name = ref(value)
        if name is not None:
            return {"node": name}
    raise UserError(f"dslim cannot store the argument {value!r} ({type(value).__name__}) of a traced operation")


def decode(value: object, env=None) -> object:  # type: ignore[no-untyped-def]
    """The argument value an `encode`d JSON form stands for; `env(name)` gives a node's value."""
    if isinstance(value, list):
        return [decode(v, env) for v in value]
    if not isinstance(value, dict):
        return value
    (kind, inner), *rest = value.items()
    if rest:
        raise UserError(f"malformed stored argument {value!r}")
    if kind == "tuple":
        return tuple(decode(v, env) for v in inner)
    if kind == "dict" and isinstance(inner, dict):
        return {k: decode(v, env) for k, v in inner.items()}
    if kind == "slice":
        return slice(*(decode(v, env) for v in inner))
    if kind == "ellipsis":
        return Ellipsis
    if kind == "float":
        return float(inner)
    if kind == "dtype" and inner in _DTYPES:
        return _DTYPES[inner]
    if kind == "format" and inner in _FORMATS:
        return _FORMATS[inner]
    if kind == "node":
        return env(inner) if env is not None else Ref(inner)
    raise UserError(f"malformed stored argument {value!r}")
