"""Which channels of a traced model must be sliced together: one pass over its graph with the example input.

Every node runs for real (so shapes and sizes are known) while its channel rule runs on the atoms of its operands
(`dslim.convert.atoms`): convolutions and linear layers start new atoms; a grouped convolution ties its input and
output channels block by block (a depthwise one, channel by channel); sums and channel-wise products tie their
operands; normalization, activations and pooling pass atoms through; concatenation, splits, permutes, flattening
and channel shuffles are run on the labels themselves; a reshape that splits a channel dimension ties the blocks it
makes. What has no rule, or breaks one (a reshape to a fixed channel count, a channel index, an unknown operation),
pins the atoms it touches: those channels stay at full width, and the reason is kept for `describe()`.

At the same time each node is written down as data (`dslim.convert.ops`), with the slimmable layers, channel splits
and channel parameters it becomes; `dslim.convert.groups` then turns the atoms into channel groups.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from dslim.convert import atoms as A
from dslim.convert.ops import FUNCTIONS, METHODS, encode, function_name, module_args
from dslim.errors import UserError


@dataclass
class Size:
    """An integer that is a size: `atoms` when it is the size of a channel dimension, `deps` the atoms it depends on
    (a size derived from channel counts changes with the width)."""

    atoms: np.ndarray | None
    deps: np.ndarray


ELEMENTWISE = set("""abs acos add addcmul addcdiv asin atan atan2 ceil clamp clamp_ clamp_max clamp_min clip cos cosh
div div_ eq erf exp expm1 floor floor_ fmod ge gt hardshrink isfinite isnan le lerp log log1p log2 lt maximum minimum
mul mul_ ne neg pow reciprocal relu relu_ relu6 round rsqrt sigmoid sigmoid_ sign sin sinh sqrt square sub sub_ tanh
trunc where leaky_relu elu selu celu gelu silu mish hardswish hardsigmoid hardtanh softplus softsign logsigmoid dropout
dropout2d alpha_dropout add_ bernoulli_ float type_as detach clone masked_fill uniform_ normal_ fill_ zero_ truediv
floordiv mod pos iadd isub imul itruediv contiguous""".split())
REDUCTIONS = set("mean sum amax amin std var prod norm logsumexp".split())
ALONG_DIM = set("softmax log_softmax normalize".split())
POSITIONAL = set("cumsum cumprod flip roll argmax argmin".split())
RESHAPES = set("view reshape unflatten view_as reshape_as".split())
MOVES = set("permute transpose swapaxes movedim squeeze unsqueeze expand expand_as t flatten repeat tile".split())
SPLITS = set("chunk split tensor_split narrow".split())
CREATE_LIKE = set("zeros_like ones_like full_like empty_like rand_like randn_like bernoulli".split())
CREATE = set("zeros ones full empty rand randn arange new_zeros new_ones new_empty new_full".split())
POOLS = set("avg_pool2d adaptive_avg_pool2d".split())
SPATIAL = set("max_pool2d adaptive_max_pool2d interpolate upsample pad".split())
MATMUL = set("matmul bmm mm einsum baddbmm addmm conv2d conv_transpose2d linear".split())
SPATIAL_MODULES = (nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Upsample, nn.ZeroPad2d, nn.ConstantPad2d,
                   nn.ReflectionPad2d, nn.ReplicationPad2d)  # fmt: skip
POOL_MODULES = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)
FLAT_MODULES = (nn.Flatten, nn.Unflatten)
SHUFFLE_MODULES = (nn.ChannelShuffle,)
MIXING_MODULES = (nn.PixelShuffle, nn.PixelUnshuffle)


@dataclass
class Layer:
    """A slimmable layer found in the graph: its module spec and the atoms of its channel dimensions."""

    path: str
    spec: dict
    sites: dict[str, int]
    """Layout name (`in`, `out`) -> index into `Analysis.sites`."""
    source: dict[str, torch.Tensor]
    """The user's tensors it starts from (weight, bias, running statistics, ...)."""
    origin: np.ndarray | None = None
    """Its output atoms, if it makes channels (conv, linear)."""


@dataclass
class Analysis:
    """What one pass over the graph(s) found."""

    atoms: A.Atoms = field(default_factory=A.Atoms)
    sites: list[object] = field(default_factory=list)
    """Atom arrays (or, for a channel parameter, its label tensor) that become stored layouts."""
    layers: dict[str, Layer] = field(default_factory=dict)
    graphs: dict[str, list[dict]] = field(default_factory=dict)
    """Stored nodes per mode (`eval`, `train`)."""
    labels: dict[str, dict[str, object]] = field(default_factory=dict)
    """Per mode, the channel meta of each node's value (for the shape check)."""
    shapes: dict[str, dict[str, object]] = field(default_factory=dict)
    """Per mode, each node's value shapes at the example input."""
    split_parts: list[np.ndarray] = field(default_factory=list)
    """Atoms of every part a channel split makes (ranks keep the parts balanced)."""
    where: dict[str, str] = field(default_factory=dict)
    """Node name -> where it comes from in the user's code."""
    inputs: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    """Per mode, the nodes each node reads."""
    outputs: int = 0
    """Size of the last dimension of the model's output (its classes)."""

    def site(self, atoms: object) -> int:
        self.sites.append(atoms)
        return len(self.sites) - 1


def _where(node: fx.Node) -> str:
    """`file:line` of the user's code that made `node` (its last frame outside torch and dslim)."""
    trace = (node.stack_trace or "").strip().splitlines()
    for line in reversed(trace):
        line = line.strip()
        if line.startswith("File ") and "/torch/" not in line and "/dslim/" not in line:
            path, _, rest = line.removeprefix("File ").partition(", line ")
            return f"{path.strip(chr(34)).rsplit('/', 1)[-1]}:{rest.split(',')[0]}"
    return node.name


class Walker:
    """Runs one traced graph on the example input, applying channel rules and writing nodes as data."""

    def __init__(self, analysis: Analysis, gm: fx.GraphModule, mode: str) -> None:
        self.an, self.gm, self.mode = analysis, gm, mode
        self.real: dict[str, object] = {}
        self.meta: dict[str, object] = {}
        self.nodes: list[dict] = []
        self.users: dict[str, int] = {n.name: len(n.users) for n in gm.graph.nodes}
        self.skip: set[str] = set()

    # -- helpers ------------------------------------------------------------------------------------------------
    def pin(self, meta: object, reason: str) -> None:
        """Pin every atom in `meta` (labels, sizes, nested tuples)."""
        if isinstance(meta, torch.Tensor):
            self.an.atoms.pin(meta, reason)
        elif isinstance(meta, Size):
            self.an.atoms.pin(meta.deps, reason)
        elif isinstance(meta, (tuple, list)):
            for m in meta:
                self.pin(m, reason)

    def labels_of(self, value: object, meta: object) -> torch.Tensor | None:
        return meta if isinstance(value, torch.Tensor) and isinstance(meta, torch.Tensor) else None

    def args_of(self, node: fx.Node) -> tuple[tuple, dict, tuple, dict]:
        real = fx.node.map_arg((node.args, node.kwargs), lambda n: self.real[n.name])
        meta = fx.node.map_arg((node.args, node.kwargs), lambda n: self.meta[n.name])
        return real[0], real[1], meta[0], meta[1]

    def emit(self, node: fx.Node, op: str, target: str, args: object = (), kwargs: object = None) -> None:
        if kwargs is None:
            kwargs = {}
        name = lambda n: n.name if isinstance(n, fx.Node) else None  # noqa: E731
        stored = encode(args, name) if op == "output" else encode(list(args), name)
        self.nodes.append({"op": op, "name": node.name, "target": target, "args": stored,
                           "kwargs": {k: encode(v, name) for k, v in kwargs.items()}})  # fmt: skip

    # -- the pass -----------------------------------------------------------------------------------------------
    def run(self, example: torch.Tensor) -> object:
        inputs = self.an.inputs.setdefault(self.mode, {})
        for node in self.gm.graph.nodes:
            self.an.where[node.name] = _where(node)
            inputs[node.name] = [n.name for n in node.all_input_nodes]
            if node.op == "placeholder":
                if self.real:
                    raise UserError("dslim converts models whose forward takes one input (the image batch)")
                self.real[node.name] = example
                self.meta[node.name] = A.none(example.dim())
                self.emit(node, "input", "")
            elif node.op == "output":
                self.pin(fx.node.map_arg(node.args, lambda n: self.meta[n.name]), "the model's output")
                self.emit(node, "output", "", node.args[0])
                out = fx.node.map_arg(node.args[0], lambda n: self.real[n.name])
                if isinstance(out, torch.Tensor) and out.dim():
                    self.an.outputs = int(out.shape[-1])
                self.an.graphs[self.mode] = self.nodes
                self.an.labels[self.mode] = self.meta
                self.an.shapes[self.mode] = {k: _shapes(v) for k, v in self.real.items()}
                return out
            elif node.op == "get_attr":
                self.get_attr(node)
            elif node.op == "call_module":
                self.call_module(node)
            else:
                self.call(node)
        raise UserError("the traced graph has no output")

    def execute(self, node: fx.Node) -> object:
        args, kwargs, _, _ = self.args_of(node)
        if node.op == "call_module":
            return self.gm.get_submodule(node.target)(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return node.target(*args, **kwargs)

    # -- parameters ---------------------------------------------------------------------------------------------
    def get_attr(self, node: fx.Node) -> None:
        value = _fetch(self.gm, node.target)
        self.real[node.name] = value
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{_where(node)}: attribute {node.target} is not a tensor; dslim cannot store it")
        lifted = self.lift_layer(node)
        if lifted:
            self.meta[node.name] = None
            return
        path = f"{node.target}"
        if path not in self.an.layers:
            n = value.numel()
            labels = torch.as_tensor(self.an.atoms.new(n)).view(value.shape) if 0 < n <= A.LABEL_LIMIT else None
            if labels is None:
                labels = A.none(value.dim())
            spec = {"type": "Param", "args": {"shape": list(value.shape), "dtype": str(value.dtype).split(".")[1],
                                              "parameter": isinstance(value, nn.Parameter)}}  # fmt: skip
            site = self.an.site(labels)
            self.an.layers[path] = Layer(path, spec, {"in": site}, {"weight": value.detach()})
        self.meta[node.name] = self.an.sites[self.an.layers[path].sites["in"]]
        self.emit(node, "module", path)

    def lift_layer(self, node: fx.Node) -> bool:
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
    def call_module(self, node: fx.Node) -> None:
        m = self.gm.get_submodule(node.target)
        value = self.execute(node)
        self.real[node.name] = value
        _, _, margs, _ = self.args_of(node)
        x = margs[0] if margs else None
        path = str(node.target)
        where = f"{_where(node)} ({path}: {type(m).__name__})"
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            self.meta[node.name] = self.conv(path, m, x, m.weight, m.bias, _conv_args(m), node)
        elif isinstance(m, nn.Linear):
            self.meta[node.name] = self.linear(path, x, m.weight, m.bias, node)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            stats = {"running_mean": m.running_mean, "running_var": m.running_var}
            self.meta[node.name] = self.batchnorm(path, m, x, m.weight, m.bias, stats, node)
        elif isinstance(m, nn.LayerNorm):
            self.meta[node.name] = self.layernorm(path, x, m.normalized_shape, m.eps, m.weight, m.bias, node)
        else:
            if list(m.parameters(recurse=False)) or list(m.buffers(recurse=False)):
                raise UserError(f"{where}: dslim cannot slice or store this layer; use Conv2d, Linear, BatchNorm, "
                                f"LayerNorm or write it with torch functions")  # fmt: skip
            spec = {"type": type(m).__name__, "args": module_args(m, where)}
            self.meta[node.name] = self.plain_module(m, node, x, value, spec)
            return
        self.emit(node, "module", path, node.args, node.kwargs)

    def plain_module(self, m: nn.Module, node: fx.Node, x: object, value: object, spec: dict) -> object:
        path = str(node.target)
        real_x = self.real[node.args[0].name] if node.args and isinstance(node.args[0], fx.Node) else None
        if isinstance(m, POOL_MODULES) or isinstance(m, SPATIAL_MODULES):
            meta = self.spatial(x, real_x, value, type(m).__name__)
            if isinstance(m, POOL_MODULES):
                site = self.an.site(_line(meta, 1, value))
                spec = {"type": "Op", "args": {"module": spec, "cost": "pool"}}
                self.an.layers.setdefault(path, Layer(path, spec, {"in": site}, {}))
            else:
                self.an.layers.setdefault(path, Layer(path, spec, {}, {}))
            self.emit(node, "module", path, node.args, node.kwargs)
            return meta
        self.an.layers.setdefault(path, Layer(path, spec, {}, {}))
        self.emit(node, "module", path, node.args, node.kwargs)
        if isinstance(m, FLAT_MODULES):
            return self.structure(node, "flatten" if isinstance(m, nn.Flatten) else "unflatten", m, (x,), {}, value)
        if isinstance(m, SHUFFLE_MODULES):
            return self.shuffle(x, real_x, m.groups, value)
        if isinstance(m, MIXING_MODULES):
            self.pin(x, f"{_where(node)}: {type(m).__name__} moves channels into space")
            return A.none(value.dim())
        return x if isinstance(x, torch.Tensor) else None  # activations, dropout, identity, softmax

    # -- layers -------------------------------------------------------------------------------------------------
    def layer(self, path: str, spec: dict, source: dict, node: fx.Node, x_in: np.ndarray | None,
              n_out: int | None) -> Layer:  # fmt: skip
        """The layer at `path`, made on first use; a later call ties its input to the first one's."""
        found = self.an.layers.get(path)
        if found is None:
            sites = {} if x_in is None else {"in": self.an.site(x_in)}
            origin = None
            if n_out is not None:
                origin = self.an.atoms.new(n_out)
                sites["out"] = self.an.site(origin)
            found = self.an.layers[path] = Layer(path, spec, sites, source, origin)
        elif x_in is not None:
            self.an.atoms.tie(self.an.sites[found.sites["in"]], x_in)
        return found

    def channel_input(self, x: object, dim: int, size: int, node: fx.Node) -> np.ndarray:
        """A layer's input atoms along `dim`; atoms along any other dimension are pinned (not representable)."""
        if not isinstance(x, torch.Tensor):
            return np.full(size, -1, np.int64)
        d = dim % x.dim()
        others = [k for k in A.dims(x) if k != d]
        if others:
            self.pin(x, f"{_where(node)}: a layer's input holds channels along several dimensions")
        return A.line(x, d, size)

    def conv(self, path, m, x, weight, bias, args: dict, node: fx.Node) -> torch.Tensor:  # type: ignore[no-untyped-def]
        transposed = args.pop("transposed")
        c_in, c_out = args["in_channels"], args["out_channels"]
        g = args["groups"]
        spec = {"type": "ConvTranspose2d" if transposed else "Conv2d", "args": args}
        source = {"weight": weight.detach(), "bias": None if bias is None else bias.detach()}
        x_in = self.channel_input(x, 1, c_in, node)
        layer = self.layer(path, spec, source, node, x_in, c_out)
        out = layer.origin
        if g > 1:
            ci, co = c_in // g, c_out // g
            for j in range(g):
                block_in, block_out = x_in[j * ci : (j + 1) * ci], out[j * co : (j + 1) * co]
                if (block_in < 0).any():
                    self.an.atoms.pin(block_out, f"{_where(node)} ({path}): a grouped conv on fixed channels")
                self.an.atoms.tie_all(np.concatenate([block_in, block_out]))
        return A.along(out, 4, 1)

    def linear(self, path, x, weight, bias, node) -> torch.Tensor:  # type: ignore[no-untyped-def]
        c_out, c_in = weight.shape
        spec = {"type": "Linear", "args": {"in_features": c_in, "out_features": c_out, "bias": bias is not None}}
        source = {"weight": weight.detach(), "bias": None if bias is None else bias.detach()}
        x_in = self.channel_input(x, -1, c_in, node)
        layer = self.layer(path, spec, source, node, x_in, c_out)
        ndim = x.dim() if isinstance(x, torch.Tensor) else 2
        return A.along(layer.origin, ndim, ndim - 1)

    def batchnorm(self, path, m, x, weight, bias, stats, node) -> torch.Tensor:  # type: ignore[no-untyped-def]
        c = stats["running_mean"].numel() if stats["running_mean"] is not None else weight.numel()
        if stats["running_mean"] is None:
            raise UserError(f"{_where(node)} ({path}): BatchNorm without running statistics is not supported")
        x_in = self.channel_input(x, 1, c, node)
        ndim = x.dim() if isinstance(x, torch.Tensor) else 4
        spec = {"type": "BatchNorm", "args": {"num_features": c, "eps": m.eps, "momentum": m.momentum,
                                              "affine": weight is not None, "ndim": ndim}}  # fmt: skip
        source = {"weight": None if weight is None else weight.detach(),
                  "bias": None if bias is None else bias.detach(),
                  "running_mean": stats["running_mean"].detach(), "running_var": stats["running_var"].detach()}  # fmt: skip
        self.layer(path, spec, source, node, x_in, None)
        return x

    def layernorm(self, path, x, shape, eps, weight, bias, node) -> torch.Tensor:  # type: ignore[no-untyped-def]
        shape = tuple(shape)
        spec = {"type": "LayerNorm", "args": {"normalized_shape": list(shape), "eps": eps,
                                              "affine": weight is not None, "bias": bias is not None}}  # fmt: skip
        source = {"weight": None if weight is None else weight.detach(),
                  "bias": None if bias is None else bias.detach()}  # fmt: skip
        if len(shape) == 1:
            x_in = self.channel_input(x, -1, shape[0], node)
        else:
            normed = list(range(x.dim() - len(shape), x.dim())) if isinstance(x, torch.Tensor) else []
            if isinstance(x, torch.Tensor) and any(d in normed for d in A.dims(x)):
                self.pin(x, f"{_where(node)} ({path}): LayerNorm over channels and other dimensions")
            x_in = None
        self.layer(path, spec, source, node, x_in, None)
        return x

    # -- functions and methods ----------------------------------------------------------------------------------
    def call(self, node: fx.Node) -> None:
        if node.op == "call_method":
            if node.target not in METHODS:
                raise UserError(f"{_where(node)}: dslim has no rule for the tensor method .{node.target}(); "
                                f"rewrite it with supported torch operations")  # fmt: skip
            name = f"Tensor.{node.target}"
        else:
            name = function_name(node.target)
            if name is None:
                label = getattr(node.target, "__qualname__", str(node.target))
                raise UserError(f"{_where(node)}: dslim cannot store a call to {label} as data; use torch operations "
                                f"(the model must reload without your source file)")  # fmt: skip
        kind = name.split(".")[-1]
        if kind in ("conv2d", "linear", "layer_norm", "batch_norm", "conv_transpose2d") and self.lifted(node, kind):
            return
        value = self.execute(node)
        self.real[node.name] = value
        args, kwargs, margs, mkwargs = self.args_of(node)
        meta = self.rule(node, name, kind, args, kwargs, margs, mkwargs, value)
        self.meta[node.name] = meta
        if node.name not in self.skip:
            op, target = ("method", node.target) if node.op == "call_method" else ("function", name)
            self.emit(node, op, target, node.args, node.kwargs)

    def lifted(self, node: fx.Node, kind: str) -> bool:
        """A functional conv/linear/norm whose weights are parameters: run and analysed as a layer."""
        params = _layer_params(node, kind)
        if not all(p is None or (p.op == "get_attr" and len(p.users) == 1) for p in params):
            return False
        args, kwargs, margs, _ = self.args_of(node)
        value = self.execute(node)
        self.real[node.name] = value
        bound = _bind(node, kind, args, kwargs)
        owner = str(params[0].target).rpartition(".")[0] if params[0] is not None else node.name
        path = owner if owner and owner not in self.an.layers and not _is_module(self.gm, owner) else node.name
        path = path if path not in self.an.layers or self.an.layers[path].spec.get("fn") == node.name else node.name
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
            self.meta[node.name] = self.conv(path, None, x, weight, bias, conv_args, node)
        elif kind == "linear":
            self.meta[node.name] = self.linear(path, x, weight, bias, node)
        elif kind == "layer_norm":
            self.meta[node.name] = self.layernorm(path, x, bound["normalized_shape"], bound["eps"], weight, bias, node)
        else:
            return False  # functional batch norm: analysed as an unknown operation
        self.emit(node, "module", path, (node.args[0],))
        return True

    def rule(self, node, name, kind, args, kwargs, margs, mkwargs, value) -> object:  # type: ignore[no-untyped-def]
        where = _where(node)
        tensors = [m for m in _flat((margs, mkwargs)) if isinstance(m, torch.Tensor)]
        if kind == "getattr" and name == "builtins.getattr":
            return self.attribute(args, margs, value, where)
        if kind == "getitem" and not isinstance(args[0], torch.Tensor):
            return margs[0][args[1]] if isinstance(margs[0], (tuple, list)) else None
        if kind in ("add", "mul") and isinstance(value, (tuple, list)):
            return self.sequence_op(kind, args, margs, value)
        if kind in ("size", "dim", "numel") or not isinstance(value, (torch.Tensor, tuple, list)):
            return self.scalar(node, kind, args, margs, value)
        if not tensors and not isinstance(value, torch.Tensor):
            return self.scalar(node, kind, args, margs, value)
        if kind in ("max", "min") and not (len(tensors) > 1 and isinstance(value, torch.Tensor)):
            kind = "amax" if kind == "max" else "amin"
            if isinstance(value, tuple):  # (values, indices): the indices name positions
                self.pin(tensors, f"{where}: {name} with indices")
                return (A.none(value[0].dim()), A.none(value[1].dim()))
        if kind in ELEMENTWISE:
            return self.elementwise(node, args, kwargs, margs, mkwargs, value)
        if kind in REDUCTIONS:
            return self.reduce(node, kind, args, kwargs, margs, value)
        if kind in ALONG_DIM:
            return margs[0]
        if kind in POSITIONAL:
            return self.positional(node, name, args, kwargs, margs, value)
        if kind in RESHAPES or kind in MOVES or kind == "getitem" or kind in SPLITS or kind in ("cat", "concat",
                                                                                               "concatenate", "stack",
                                                                                               "unbind"):  # fmt: skip
            return self.structure(node, kind, None, args, kwargs, value, margs, mkwargs)
        if kind == "channel_shuffle":
            return self.shuffle(margs[0], args[0], args[1], value)
        if kind in CREATE_LIKE:
            return margs[0] if isinstance(margs[0], torch.Tensor) else A.none(value.dim())
        if kind in CREATE:
            return self.create(node, args, margs, value)
        if kind in POOLS or kind in SPATIAL or (kind == "mean" and False):
            meta = self.spatial(margs[0], args[0], value, name)
            if kind in POOLS:
                self.costed(node, name, "pool", _line(meta, 1, value))
            return meta
        if kind in MATMUL:
            self.pin(tensors, f"{where}: {name} (no channel rule)")
            self.costed(node, name, "matmul", None)
            return A.none(value.dim()) if isinstance(value, torch.Tensor) else None
        self.pin(tensors, f"{where}: {name} (no channel rule)")
        return _none_like(value)

    def costed(self, node: fx.Node, fn: str, kind: str, atoms: np.ndarray | None) -> None:
        """Run this call through an `Op` module, so the complexity model sees (and costs) it."""
        path = f"dslim_ops.{node.name}"
        spec = {"type": "Op", "args": {"fn": fn, "method": node.op == "call_method", "cost": kind}}
        sites = {} if atoms is None else {"in": self.an.site(atoms)}
        self.an.layers.setdefault(path, Layer(path, spec, sites, {}))
        self.emit(node, "module", path, node.args, node.kwargs)
        self.skip.add(node.name)

    # -- rules --------------------------------------------------------------------------------------------------
    def attribute(self, args, margs, value, where) -> object:  # type: ignore[no-untyped-def]
        name = args[1]
        from dslim.convert.ops import ATTRIBUTES

        if name not in ATTRIBUTES:
            raise UserError(f"{where}: dslim cannot store a read of the attribute {name!r}")
        if name == "shape":
            return tuple(self.size_of(margs[0], args[0], d) for d in range(args[0].dim()))
        if name == "T":
            return self.structure_labels(margs[0], args[0], lambda t: t.T, value)
        return None

    def size_of(self, labels: object, x: torch.Tensor, d: int) -> Size | None:
        if not isinstance(labels, torch.Tensor):
            return None
        line = A.line(labels, d, x.shape[d])
        if not (line >= 0).any() or (labels.shape[d] == 1 and x.shape[d] > 1):
            return None
        return Size(line, line[line >= 0])

    def scalar(self, node, kind, args, margs, value) -> object:  # type: ignore[no-untyped-def]
        if kind == "size" and isinstance(args[0], torch.Tensor):
            x = args[0]
            if len(args) > 1 or "dim" in node.kwargs:
                d = args[1] if len(args) > 1 else node.kwargs["dim"]
                return self.size_of(margs[0], x, d)
            return tuple(self.size_of(margs[0], x, d) for d in range(x.dim()))
        if kind == "numel" and isinstance(args[0], torch.Tensor):
            deps = margs[0][margs[0] >= 0].numpy() if isinstance(margs[0], torch.Tensor) else np.zeros(0, np.int64)
            return Size(None, deps) if deps.size else None
        deps = [m.deps for m in _flat(margs) if isinstance(m, Size)]
        deps += [t[t >= 0].numpy() for t in _flat(margs) if isinstance(t, torch.Tensor)]
        deps = [d for d in deps if d.size]
        if not deps:
            return _none_like(value)
        if isinstance(value, (tuple, list)):
            return type(value)(Size(None, np.concatenate(deps)) for _ in value)
        if kind in ("int", "float", "floor", "ceil") and len(margs) == 1 and isinstance(margs[0], Size):
            return margs[0]
        return Size(None, np.concatenate(deps))

    def sequence_op(self, kind, args, margs, value) -> object:  # type: ignore[no-untyped-def]
        def seq(real, meta):  # type: ignore[no-untyped-def]
            return list(meta) if isinstance(meta, (tuple, list)) else [None] * len(real)

        if kind == "add":
            return type(value)(seq(args[0], margs[0]) + seq(args[1], margs[1]))
        i = 0 if isinstance(args[0], (tuple, list)) else 1
        times = args[1 - i]
        deps = margs[1 - i]
        out = seq(args[i], margs[i]) * times
        if isinstance(deps, Size):
            out = [Size(None, deps.deps) if o is None else o for o in out]
        return type(value)(out)

    def elementwise(self, node, args, kwargs, margs, mkwargs, value) -> object:  # type: ignore[no-untyped-def]
        if not isinstance(value, torch.Tensor):
            return None
        pairs = [(a, m) for a, m in zip(_flat((args, kwargs)), _flat((margs, mkwargs))) if isinstance(a, torch.Tensor)]
        out_shape = value.shape
        out: torch.Tensor | None = None
        for real, labels in pairs:
            if not isinstance(labels, torch.Tensor) or real.dim() > value.dim():
                continue
            lab = labels.view((1,) * (value.dim() - labels.dim()) + tuple(labels.shape))
            lab = lab.expand(*[lab.shape[d] if lab.shape[d] > 1 else 1 for d in range(lab.dim())])
            shape = (1,) * (value.dim() - real.dim()) + tuple(real.shape)
            if out is None:
                out = lab
                continue
            both = torch.broadcast_tensors(out, lab)
            self.an.atoms.tie(both[0], both[1])
            out = torch.where(both[0] >= 0, both[0], both[1])
            self._check_full(out, shape, out_shape, node)
        if out is None:
            return A.none(value.dim())
        for real, labels in pairs:
            if isinstance(labels, torch.Tensor) and real.dim() <= value.dim():
                self._check_full(out, (1,) * (value.dim() - real.dim()) + tuple(real.shape), out_shape, node, labels)
        return A.compress(out)

    def _check_full(self, out, shape, out_shape, node, labels=None) -> None:  # type: ignore[no-untyped-def]
        """An operand without atoms along a channel dimension of the result has a fixed size there: pin."""
        if labels is None:
            return
        lab = labels.view((1,) * (len(shape) - labels.dim()) + tuple(labels.shape))
        for d in A.dims(out):
            if shape[d] == out_shape[d] > 1 and lab.shape[d] == 1 and not (lab >= 0).any():
                self.pin(out, f"{_where(node)}: an operand of fixed size meets channels")
                return

    def reduce(self, node, kind, args, kwargs, margs, value) -> object:  # type: ignore[no-untyped-def]
        x, labels = args[0], margs[0]
        if not isinstance(value, torch.Tensor) or not isinstance(labels, torch.Tensor):
            return _none_like(value)
        dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
        keep = kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False)
        if dims is None:
            return A.none(value.dim())
        dims = [d % x.dim() for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
        channel = [d for d in A.dims(labels) if d in dims]
        rest = [d for d in A.dims(labels) if d not in dims]
        if channel and rest:
            self.pin(labels, f"{_where(node)}: a reduction over some of several channel dimensions")
            return A.none(value.dim())
        if channel:
            return A.none(value.dim())
        out = labels
        for d in sorted(dims, reverse=True):
            out = out.narrow(d, 0, 1) if keep else out.select(d, 0)
        return out.contiguous()

    def positional(self, node, name, args, kwargs, margs, value) -> object:  # type: ignore[no-untyped-def]
        labels = margs[0]
        dims = kwargs.get("dims", kwargs.get("dim", args[-1] if len(args) > 1 else None))
        if not isinstance(labels, torch.Tensor):
            return _none_like(value)
        dims = [d % args[0].dim() for d in (dims if isinstance(dims, (tuple, list)) else [dims])] if dims is not None \
            else list(range(args[0].dim()))  # fmt: skip
        if any(d in A.dims(labels) for d in dims):
            self.pin(labels, f"{_where(node)}: {name} along channels (no channel rule)")
            return A.none(value.dim()) if isinstance(value, torch.Tensor) else None
        return labels if isinstance(value, torch.Tensor) and value.dim() == labels.dim() else _none_like(value)

    def spatial(self, labels, x, value, name) -> torch.Tensor:  # type: ignore[no-untyped-def]
        if not isinstance(labels, torch.Tensor) or not isinstance(x, torch.Tensor):
            return A.none(value.dim())
        if any(d >= x.dim() - 2 for d in A.dims(labels)) or labels.dim() != value.dim():
            self.pin(labels, f"{name} over a channel dimension")
            return A.none(value.dim())
        return labels

    def create(self, node, args, margs, value) -> object:  # type: ignore[no-untyped-def]
        if not isinstance(value, torch.Tensor):
            return None
        sizes = [m for m in _flat(margs) if isinstance(m, Size)]
        if not sizes:
            return A.none(value.dim())
        if len(sizes) == 1 and sizes[0].atoms is not None and len(sizes[0].atoms) in value.shape:
            dims = [d for d in range(value.dim()) if value.shape[d] == len(sizes[0].atoms)]
            return A.along(sizes[0].atoms, value.dim(), dims[-1])
        self.pin(sizes, f"{_where(node)}: a tensor made with a size computed from a channel count")
        return A.none(value.dim())

    def shuffle(self, labels, x, groups, value) -> torch.Tensor:  # type: ignore[no-untyped-def]
        """Channel shuffle: the `groups` blocks of channels are tied position by position, then interleaved."""
        if not isinstance(labels, torch.Tensor):
            return A.none(value.dim())
        line = A.line(labels, 1, x.shape[1]).reshape(groups, -1)
        for j in range(1, groups):
            self.an.atoms.tie(line[0], line[j])
        return A.along(line.T.reshape(-1), value.dim(), 1)

    def structure_labels(self, labels, x, fn, value) -> torch.Tensor:  # type: ignore[no-untyped-def]
        return A.compress(fn(A.expand(labels, x.shape)))

    def structure(self, node, kind, module, args, kwargs, value, margs=None, mkwargs=None) -> object:  # type: ignore[no-untyped-def]
        """Reshaping, moving, splitting and joining: run on the labels, then check what the runtime will do."""
        from dslim.convert.structure import structure

        return structure(self, node, kind, module, args, kwargs, value, margs, mkwargs)


# -- small helpers -------------------------------------------------------------------------------------------------
def _fetch(gm: fx.GraphModule, target: str) -> object:
    obj: object = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _is_module(gm: fx.GraphModule, path: str) -> bool:
    try:
        gm.get_submodule(path)
        return True
    except AttributeError:
        return False


def _flat(x: object) -> list:
    if isinstance(x, dict):
        return [v for item in x.values() for v in _flat(item)]
    if isinstance(x, (tuple, list)):
        return [v for item in x for v in _flat(item)]
    return [x]


def _none_like(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return A.none(value.dim())
    if isinstance(value, (tuple, list)):
        return type(value)(_none_like(v) for v in value)
    return None


def _shapes(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)) and not isinstance(value, torch.Size):
        return [_shapes(v) for v in value]
    return None


def _line(labels: object, dim: int, value: object) -> np.ndarray:
    if isinstance(labels, torch.Tensor) and isinstance(value, torch.Tensor):
        return A.line(labels, dim, value.shape[dim])
    return np.zeros(0, np.int64)


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


assert operator.getitem  # the rules above treat getitem on tuples, sizes and tensors
assert FUNCTIONS
