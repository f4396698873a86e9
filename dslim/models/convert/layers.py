"""Channel rules of modules and layers: the user's standard layers become slimmable ones.

Conv2d, ConvTranspose2d and Linear start new atoms for their outputs (a grouped conv ties each group's input and
output channels, so a narrower subnet runs fewer groups of the same width); BatchNorm and LayerNorm over channels
pass them through and are sliced with them. Functional convolutions, linear layers and LayerNorms whose weights are
the model's own parameters (`F.conv2d(x, self.weight)`) become layers too. A tensor the model uses directly (a layer
scale, a normalization constant) becomes a `Param` whose atoms meet their channels through the operations it joins.
Parameter-free modules (activations, pooling, dropout, flatten, channel shuffle) are stored by type and arguments.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from dslim.errors import UserError
from dslim.models.convert import atoms as A
from dslim.models.convert import rules
from dslim.models.convert.analysis import Layer, Pass, fetch, line_of, source_of
from dslim.models.convert.ops import function_name, module_args

FUNCTIONAL = ("conv2d", "linear", "layer_norm", "batch_norm", "conv_transpose2d")
SPATIAL_MODULES = (nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Upsample, nn.ZeroPad2d, nn.ConstantPad2d,
                   nn.ReflectionPad2d, nn.ReplicationPad2d)  # fmt: skip
POOL_MODULES = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)
FLAT_MODULES = (nn.Flatten, nn.Unflatten)
MIXING_MODULES = (nn.PixelShuffle, nn.PixelUnshuffle)
SHUFFLE_MODULES = (nn.ChannelShuffle,)


# -- parameters ---------------------------------------------------------------------------------------------
def get_attr(w: Pass, node: fx.Node) -> None:
    value = fetch(w.gm, node.target)
    w.real[node.name] = value
    if not isinstance(value, torch.Tensor):
        raise UserError(f"{source_of(node)}: attribute {node.target} is not a tensor; dslim cannot store it")
    lifted = lift_layer(w, node)
    if lifted:
        w.meta[node.name] = None
        return
    path = f"{node.target}"
    if path not in w.an.layers:
        n = value.numel()
        labels = torch.as_tensor(w.an.atoms.new(n)).view(value.shape) if 0 < n <= A.LABEL_LIMIT else None
        if labels is None:
            labels = A.none(value.dim())
        spec = {"type": "Param", "args": {"shape": list(value.shape), "dtype": str(value.dtype).split(".")[1],
                                          "parameter": isinstance(value, nn.Parameter)}}  # fmt: skip
        site = w.an.site(labels)
        w.an.layers[path] = Layer(path, spec, {"in": site}, {"weight": value.detach()})
    w.meta[node.name] = w.an.sites[w.an.layers[path].sites["in"]]
    w.emit(node, "module", path)


def lift_layer(w: Pass, node: fx.Node) -> bool:
    """Whether this parameter is the weight or bias of a functional conv/linear/norm that becomes a layer."""
    users = list(node.users)
    if len(users) != 1 or users[0].op != "call_function":
        return False
    name = function_name(users[0].target) or ""
    kind = name.split(".")[-1]
    if kind not in ("conv2d", "linear", "layer_norm", "batch_norm", "conv_transpose2d"):
        return False
    return all(isinstance(a, fx.Node) and a.op == "get_attr" and len(a.users) == 1
               for a in _layer_params(users[0], kind) if a is not None)  # fmt: skip


# -- modules ------------------------------------------------------------------------------------------------
def call_module(w: Pass, node: fx.Node) -> None:
    m = w.gm.get_submodule(node.target)
    value = w.execute(node)
    w.real[node.name] = value
    _, _, margs, _ = w.args_of(node)
    x = margs[0] if margs else None
    path = str(node.target)
    where = f"{source_of(node)} ({path}: {type(m).__name__})"
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        w.meta[node.name] = conv(w, path, m, x, m.weight, m.bias, _conv_args(m), node)
    elif isinstance(m, nn.Linear):
        w.meta[node.name] = linear(w, path, x, m.weight, m.bias, node)
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        stats = {"running_mean": m.running_mean, "running_var": m.running_var}
        w.meta[node.name] = batchnorm(w, path, m, x, m.weight, m.bias, stats, node)
    elif isinstance(m, nn.LayerNorm):
        w.meta[node.name] = layernorm(w, path, x, m.normalized_shape, m.eps, m.weight, m.bias, node)
    else:
        if list(m.parameters(recurse=False)) or list(m.buffers(recurse=False)):
            raise UserError(f"{where}: dslim cannot slice or store this layer; use Conv2d, Linear, BatchNorm, "
                            f"LayerNorm or write it with torch functions")  # fmt: skip
        spec = {"type": type(m).__name__, "args": module_args(m, where)}
        w.meta[node.name] = plain_module(w, m, node, x, value, spec)
        return
    w.emit(node, "module", path, node.args, node.kwargs)


def plain_module(w: Pass, m: nn.Module, node: fx.Node, x: object, value: object, spec: dict) -> object:
    path = str(node.target)
    real_x = w.real[node.args[0].name] if node.args and isinstance(node.args[0], fx.Node) else None
    if isinstance(m, POOL_MODULES) or isinstance(m, SPATIAL_MODULES):
        meta = rules.spatial(w, x, real_x, value, type(m).__name__)
        if isinstance(m, POOL_MODULES):
            site = w.an.site(line_of(meta, 1, value))
            spec = {"type": "Op", "args": {"module": spec, "cost": "pool"}}
            w.an.layers.setdefault(path, Layer(path, spec, {"in": site}, {}))
        else:
            w.an.layers.setdefault(path, Layer(path, spec, {}, {}))
        w.emit(node, "module", path, node.args, node.kwargs)
        return meta
    w.an.layers.setdefault(path, Layer(path, spec, {}, {}))
    w.emit(node, "module", path, node.args, node.kwargs)
    if isinstance(m, FLAT_MODULES):
        kind = "flatten" if isinstance(m, nn.Flatten) else "unflatten"
        return rules.structure(w, node, kind, m, (real_x,), {}, value, (x,), {})
    if isinstance(m, SHUFFLE_MODULES):
        return rules.shuffle(w, x, real_x, m.groups, value)
    if isinstance(m, MIXING_MODULES):
        w.pin(x, f"{source_of(node)}: {type(m).__name__} moves channels into space")
        return A.none(value.dim())
    return x if isinstance(x, torch.Tensor) else None  # activations, dropout, identity, softmax


# -- layers -------------------------------------------------------------------------------------------------
def layer_at(w: Pass, path: str, spec: dict, source: dict, node: fx.Node, x_in: np.ndarray | None,
          n_out: int | None) -> Layer:  # fmt: skip
    """The layer at `path`, made on first use; a later call ties its input to the first one's."""
    found = w.an.layers.get(path)
    if found is None:
        sites = {} if x_in is None else {"in": w.an.site(x_in)}
        origin = None
        if n_out is not None:
            origin = w.an.atoms.new(n_out)
            sites["out"] = w.an.site(origin)
        found = w.an.layers[path] = Layer(path, spec, sites, source, origin)
    elif x_in is not None:
        w.an.atoms.tie(w.an.sites[found.sites["in"]], x_in)
    return found


def channel_input(w: Pass, x: object, dim: int, size: int, node: fx.Node) -> np.ndarray:
    """A layer's input atoms along `dim`; atoms along any other dimension are pinned (not representable)."""
    if not isinstance(x, torch.Tensor):
        return np.full(size, -1, np.int64)
    d = dim % x.dim()
    others = [k for k in A.dims(x) if k != d]
    if others:
        w.pin(x, f"{source_of(node)}: a layer's input holds channels along several dimensions")
    return A.line(x, d, size)


def conv(w: Pass, path, m, x, weight, bias, args: dict, node: fx.Node) -> torch.Tensor:  # type: ignore[no-untyped-def]
    transposed = args.pop("transposed")
    c_in, c_out = args["in_channels"], args["out_channels"]
    g = args["groups"]
    spec = {"type": "ConvTranspose2d" if transposed else "Conv2d", "args": args}
    source = {"weight": weight.detach(), "bias": None if bias is None else bias.detach()}
    x_in = channel_input(w, x, 1, c_in, node)
    layer = layer_at(w, path, spec, source, node, x_in, c_out)
    out = layer.origin
    if g > 1:
        ci, co = c_in // g, c_out // g
        for j in range(g):
            block_in, block_out = x_in[j * ci : (j + 1) * ci], out[j * co : (j + 1) * co]
            if (block_in < 0).any():
                w.an.atoms.pin(block_out, f"{source_of(node)} ({path}): a grouped conv on fixed channels")
            w.an.atoms.tie_all(np.concatenate([block_in, block_out]))
    return A.along(out, 4, 1)


def linear(w: Pass, path, x, weight, bias, node) -> torch.Tensor:  # type: ignore[no-untyped-def]
    c_out, c_in = weight.shape
    spec = {"type": "Linear", "args": {"in_features": c_in, "out_features": c_out, "bias": bias is not None}}
    source = {"weight": weight.detach(), "bias": None if bias is None else bias.detach()}
    x_in = channel_input(w, x, -1, c_in, node)
    layer = layer_at(w, path, spec, source, node, x_in, c_out)
    ndim = x.dim() if isinstance(x, torch.Tensor) else 2
    return A.along(layer.origin, ndim, ndim - 1)


def batchnorm(w: Pass, path, m, x, weight, bias, stats, node) -> torch.Tensor:  # type: ignore[no-untyped-def]
    c = stats["running_mean"].numel() if stats["running_mean"] is not None else weight.numel()
    if stats["running_mean"] is None:
        raise UserError(f"{source_of(node)} ({path}): BatchNorm without running statistics is not supported")
    x_in = channel_input(w, x, 1, c, node)
    ndim = x.dim() if isinstance(x, torch.Tensor) else 4
    spec = {"type": "BatchNorm", "args": {"num_features": c, "eps": m.eps, "momentum": m.momentum,
                                          "affine": weight is not None, "ndim": ndim}}  # fmt: skip
    source = {"weight": None if weight is None else weight.detach(),
              "bias": None if bias is None else bias.detach(),
              "running_mean": stats["running_mean"].detach(), "running_var": stats["running_var"].detach()}  # fmt: skip
    layer_at(w, path, spec, source, node, x_in, None)
    return x


def layernorm(w: Pass, path, x, shape, eps, weight, bias, node) -> torch.Tensor:  # type: ignore[no-untyped-def]
    shape = tuple(shape)
    spec = {"type": "LayerNorm", "args": {"normalized_shape": list(shape), "eps": eps,
                                          "affine": weight is not None, "bias": bias is not None}}  # fmt: skip
    source = {"weight": None if weight is None else weight.detach(),
              "bias": None if bias is None else bias.detach()}  # fmt: skip
    if len(shape) == 1:
        x_in = channel_input(w, x, -1, shape[0], node)
    else:
        normed = list(range(x.dim() - len(shape), x.dim())) if isinstance(x, torch.Tensor) else []
        if isinstance(x, torch.Tensor) and any(d in normed for d in A.dims(x)):
            w.pin(x, f"{source_of(node)} ({path}): LayerNorm over channels and other dimensions")
        x_in = None
    layer_at(w, path, spec, source, node, x_in, None)
    return x


def lifted(w: Pass, node: fx.Node, kind: str) -> bool:
    """A functional conv/linear/norm whose weights are parameters: run and analysed as a layer."""
    params = _layer_params(node, kind)
    if not all(p is None or (p.op == "get_attr" and len(p.users) == 1) for p in params):
        return False
    args, kwargs, margs, _ = w.args_of(node)
    value = w.execute(node)
    w.real[node.name] = value
    bound = _bind(node, kind, args, kwargs)
    path = str(params[0].target)  # the layer is named after its weight: unique, the same in every traced mode
    weight, bias = bound["weight"], bound.get("bias")
    x = margs[0]
    if kind in ("conv2d", "conv_transpose2d"):
        t = kind == "conv_transpose2d"
        c_in = weight.shape[0] if t else weight.shape[1] * bound["groups"]
        c_out = weight.shape[1] * bound["groups"] if t else weight.shape[0]
        conv_args = {"in_channels": c_in, "out_channels": c_out, "kernel_size": list(weight.shape[2:]),
                     "stride": _pair(bound["stride"]), "padding": _pair(bound["padding"]),
                     "dilation": _pair(bound["dilation"]), "groups": bound["groups"], "bias": bias is not None,
                     "padding_mode": "zeros", "transposed": t}  # fmt: skip
        if t:
            conv_args["output_padding"] = _pair(bound["output_padding"])
        w.meta[node.name] = conv(w, path, None, x, weight, bias, conv_args, node)
    elif kind == "linear":
        w.meta[node.name] = linear(w, path, x, weight, bias, node)
    elif kind == "layer_norm":
        w.meta[node.name] = layernorm(w, path, x, bound["normalized_shape"], bound["eps"], weight, bias, node)
    else:
        return False  # functional batch norm: analysed as an unknown operation
    w.emit(node, "module", path, (node.args[0],))
    return True


# -- arguments of layers ------------------------------------------------------------------------------------------
def _pair(v: object) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


def _conv_args(m: nn.Conv2d | nn.ConvTranspose2d) -> dict:
    out = {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": list(m.kernel_size),
           "stride": list(m.stride), "padding": list(m.padding) if not isinstance(m.padding, str) else m.padding,
           "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None,
           "padding_mode": m.padding_mode, "transposed": isinstance(m, nn.ConvTranspose2d)}  # fmt: skip
    if isinstance(m, nn.ConvTranspose2d):
        out["output_padding"] = list(m.output_padding)
    return out


_SIGNATURES = {
    "conv2d": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "conv_transpose2d": ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation"),
    "linear": ("input", "weight", "bias"),
    "layer_norm": ("input", "normalized_shape", "weight", "bias", "eps"),
    "batch_norm": ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
}
_DEFAULTS = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "output_padding": 0, "bias": None, "eps": 1e-5,
             "weight": None}  # fmt: skip


def _bind(node: fx.Node, kind: str, args: tuple, kwargs: dict) -> dict:
    names = _SIGNATURES[kind]
    out = dict(_DEFAULTS)
    out.update(dict(zip(names, args)))
    out.update(kwargs)
    return out


def _layer_params(node: fx.Node, kind: str) -> list[fx.Node | None]:
    names = _SIGNATURES[kind]
    bound = dict(zip(names, node.args))
    bound.update(node.kwargs)
    wanted = ("weight", "bias") if kind != "batch_norm" else ("weight", "bias", "running_mean", "running_var")
    out = [bound.get(n) for n in wanted]
    if not isinstance(out[0], fx.Node):
        return [None]
    return [o if isinstance(o, fx.Node) else None for o in out]
