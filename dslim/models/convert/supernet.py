"""`ConvertedSupernet`: a user's model rebuilt from its stored graph, every layer slimmable.

It is a width-multiplier supernet like the built-in ones (named `widths`, a universally slimmable `width_range`,
BatchNorm `private` / `switchable` / `calibrated`, AutoSlim bins and DMCP chains over its groups), and everything it
is made of is in its constructor arguments: the graph (`dslim.models.convert.ops` names), the channel groups and the
layouts. So a saved converted supernet, or a subnet exported from it, reloads with `dslim.load_supernet` /
`dslim.load_subnet` without the user's source file. Built with `channels=`, it is that subnet as a network of its
own, each layer knowing where its channels are in the supernet's (`source`), which is how `dslim.extract` exports.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dslim.errors import UserError
from dslim.models.convert.convert import analyse, load_weights, verify
from dslim.models.convert.groups import decode_layout
from dslim.models.convert.load import build_module, load_state, parse_args
from dslim.models.convert.ops import FUNCTIONS, METHODS, build_plain
from dslim.models.convert.program import compile_graph
from dslim.models.convert.trace import run_example
from dslim.models.registry import register
from dslim.models.width import WidthSupernet
from dslim.nn.graph_ops import GraphOp, GraphParam, GraphSplit
from dslim.nn.indexed import GraphBatchNorm, GraphConv, GraphConvTranspose, GraphLayerNorm, GraphLinear
from dslim.nn.layouts import Layouts
from dslim.subnet import ChannelGroup, Subnet, make_divisible

GRAPH_FORMAT = "dslim.graph/1"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
           "int64": torch.int64, "int32": torch.int32, "bool": torch.bool, "uint8": torch.uint8}  # fmt: skip


def convert(
    model: nn.Module,
    example: torch.Tensor,
    *,
    widths: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0),
    width_range: tuple[float, float] | None = None,
    bn: str = "calibrated",
    channel_divisor: int = 1,
    channel_order: str = "original",
    name: str | None = None,
) -> ConvertedSupernet:
    """`model` as a supernet whose largest subnet computes `model` (weights and BatchNorm statistics included).

    `example` is an input batch (two images or more, so BatchNorm can run in train mode); `widths`, `width_range`
    and `bn` are those of the built-in width-multiplier supernets; `channel_order` `bn` or `l1` makes narrower
    subnets keep the most important channels first. `describe()` says what was found (`dslim.models.convert`).
    """
    name = name or type(model).__name__
    reference = run_example(model, example, name)

    def checked(graph: dict) -> ConvertedSupernet:  # shapes do not depend on BatchNorm's mode
        return ConvertedSupernet(graph, widths=(), width_range=None, bn="calibrated", channel_divisor=channel_divisor)

    graph, an = analyse(model, example, checked, channel_order, name)
    net = ConvertedSupernet(graph, widths=widths, width_range=width_range, bn=bn, channel_divisor=channel_divisor)
    if reference.device.type != "meta" and all(p.device.type != "meta" for p in model.parameters()):
        load_weights(net, an)
        verify(net, reference, example, name)
    return net


@register("converted", listed=False)
class ConvertedSupernet(WidthSupernet):
    """A traced model as a supernet; its groups are named after the layer whose output starts them."""

    arch = "converted"

    def __init__(
        self,
        graph: dict,
        widths: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0),
        width_range: tuple[float, float] | None = None,
        bn: str = "calibrated",
        channel_divisor: int = 1,
        channels: dict[str, int] | None = None,
    ) -> None:
        if not isinstance(graph, dict) or graph.get("format") != GRAPH_FORMAT:
            raise UserError(f"not a converted model's graph (format {GRAPH_FORMAT!r} expected)")
        groups = graph["groups"]
        self.units = {g["name"]: int(g["unit"]) for g in groups}
        self.minimum = {g["name"]: int(g.get("min", 1)) * int(g["unit"]) for g in groups}
        self.divisor = int(channel_divisor)
        self.base = {g["name"]: int(g["classes"]) * int(g["unit"]) for g in groups}
        super().__init__(self.base, num_classes=0, max_width=1.0, widths=tuple(widths),
                         width_range=None if width_range is None else tuple(width_range), bn=bn, dropout=0.0,
                         channels=channels)  # fmt: skip
        built = channels if channels is not None else self.base
        self.groups = {g: ChannelGroup(g, int(built[g]), min=min(self.minimum[g], int(built[g])), step=self.units[g])
                       for g in self.base}  # fmt: skip
        self.arch_kwargs = {"graph": graph, "widths": [float(w) for w in widths], "bn": bn,
                            "width_range": None if width_range is None else [float(w) for w in width_range],
                            "channel_divisor": self.divisor}  # fmt: skip
        self.graph_name = str(graph.get("name", "model"))
        full = [decode_layout(runs) for runs in graph["layouts"]]
        names = [g["name"] for g in groups]
        units = [self.units[n] for n in names]
        source: list = [None] * len(full)
        if channels is not None:  # this subnet as a network of its own: layouts keep its active positions
            chosen = {g: int(channels[g]) for g in names}
            full_book = Layouts(full, names, units)
            keep = [full_book.active(i, chosen) for i in range(len(full))]
            source = [None if k.all() else np.flatnonzero(k) for k in keep]
            full = [(g[k], r[k]) for (g, r), k in zip(full, keep)]
        self.book = Layouts(full, names, units)
        self.model = nn.Module()
        for path, spec in graph["modules"].items():
            self._place(path, self._build(spec, source))
        self._programs = {mode: compile_graph(nodes) for mode, nodes in graph["graphs"].items()}
        for program in self._programs.values():
            program.check(self.model)
        self.finish(allocate=channels is None)

    # -- building ---------------------------------------------------------------------------------------------
    def _build(self, spec: dict, source: list) -> nn.Module:
        kind, args, lay = spec["type"], dict(spec.get("args", {})), spec.get("layouts", {})
        sizes = {k: self.book.sizes[i] for k, i in lay.items() if i is not None and k != "mask"}
        src = {k: source[i] for k, i in lay.items() if i is not None}
        if kind in ("Conv2d", "ConvTranspose2d"):
            c_in, c_out = sizes.get("in", args["in_channels"]), sizes.get("out", args["out_channels"])
            g = args["groups"]
            groups = 1 if g == 1 else c_in // (args["in_channels"] // g)
            common = dict(kernel_size=tuple(args["kernel_size"]), stride=tuple(args["stride"]),
                          padding=args["padding"] if isinstance(args["padding"], str) else tuple(args["padding"]),
                          dilation=tuple(args["dilation"]), groups=groups, bias=args["bias"])  # fmt: skip
            if kind == "Conv2d":
                m = GraphConv(c_in, c_out, padding_mode=args.get("padding_mode", "zeros"), **common)
            else:
                m = GraphConvTranspose(c_in, c_out, output_padding=tuple(args["output_padding"]), **common)
        elif kind == "Linear":
            m = GraphLinear(sizes.get("in", args["in_features"]), sizes.get("out", args["out_features"]), args["bias"])
        elif kind == "BatchNorm":
            m = GraphBatchNorm(sizes.get("in", args["num_features"]), None, self.bn_mode, args["eps"], args["momentum"])
            if args["ndim"] != 4:
                m.plain_type = nn.BatchNorm1d
            if not args["affine"]:
                m.weight.requires_grad_(False)
                m.bias.requires_grad_(False)
        elif kind == "LayerNorm":
            shape = [sizes["in"]] if "in" in sizes else args["normalized_shape"]
            m = GraphLayerNorm(shape, args["eps"], args["affine"], args["bias"])
        elif kind == "Param":
            shape = list(args["shape"])
            if args.get("dim") is not None and "in" in sizes:
                shape[args["dim"]] = sizes["in"]
            m = GraphParam(shape, _DTYPES[args["dtype"]], args["parameter"], args.get("dim"))
        elif kind == "Split":
            parts = args["parts"]
            if src.get("in") is not None:  # at a subnet's widths: the parts' bounds among the kept positions
                parts = [[int(np.searchsorted(src["in"], a)), int(np.searchsorted(src["in"], b))] for a, b in parts]
            m = GraphSplit(args["dim"], parts, args["mode"])
        elif kind == "Op":
            inner = None if args.get("module") is None else build_plain(args["module"]["type"], args["module"]["args"])
            fn, method = args.get("fn"), bool(args.get("method"))
            if fn is not None and fn not in (METHODS if method else FUNCTIONS):
                raise UserError(f"unknown function {fn!r} in a stored graph")
            m = GraphOp(fn, None if method or fn is None else FUNCTIONS[fn], method, inner, args.get("cost", "none"))
        else:
            return build_plain(kind, args)
        m.setup(self.book, lay, src)
        return m

    def _place(self, path: str, module: nn.Module) -> None:
        parent = self.model
        *heads, leaf = path.split(".")
        for h in heads:
            if h not in parent._modules:
                parent.add_module(h, nn.Module())
            parent = parent._modules[h]  # type: ignore[assignment]
        parent.add_module(leaf, module)

    # -- widths -----------------------------------------------------------------------------------------------
    def width_channels(self, width: float) -> dict[str, int]:
        """Every group at `width` of its channels, rounded to a multiple of `channel_divisor` (and of its step)."""
        out = {}
        for g, c in self.base.items():
            unit = self.units[g]
            step = unit * self.divisor // np.gcd(unit, self.divisor)
            n = c if width >= 1 - 1e-9 else make_divisible(c * width, step, unit)
            out[g] = min(c, max(self.minimum[g], n // unit * unit))
        return out

    def round_channels(self, channels: float) -> int:
        return make_divisible(channels, self.divisor)

    @classmethod
    def from_config(cls, cfg):  # type: ignore[no-untyped-def]
        """The user's `--model.module`, built (with `--model.weights`) and converted. On the CPU even where a caller
        builds models on the `meta` device to validate settings: conversion runs the model on an example input."""
        if cfg.max_width != 1.0:
            raise UserError(f"--model.max-width {cfg.max_width}: a converted model is at most its own width; use 1.0")
        with torch.device("cpu"):
            model = build_module(cfg.module, parse_args(cfg.module_args), cfg.num_classes)
            if cfg.weights:
                load_state(model, cfg.weights, cfg.module)
            example = torch.randn(2, 3, cfg.input_size, cfg.input_size, generator=torch.Generator().manual_seed(0))
            net = convert(model, example, widths=cfg.widths, width_range=cfg.width_range, bn=cfg.bn,
                          channel_divisor=cfg.channel_divisor, channel_order=cfg.channel_order,
                          name=cfg.module)  # fmt: skip
        classes = net.arch_kwargs["graph"]["outputs"]
        if classes != cfg.num_classes:
            raise UserError(f"{cfg.module} outputs {classes} classes but --model.num-classes is {cfg.num_classes}: "
                            f"set --model.num-classes {classes}, or build the model for "
                            f"{cfg.num_classes} classes")  # fmt: skip
        return net

    # -- running ----------------------------------------------------------------------------------------------
    def set_subnet(self, subnet: Subnet) -> None:
        if subnet is not self.subnet:
            self.check(subnet)
            self.book.select(subnet)
        super().set_subnet(subnet)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        program = self._programs.get("train") if self.training else None
        return (program or self._programs["eval"]).run(self.model, x)

    def describe(self) -> str:
        """The channel groups (max channels, step, layers) and what stays at full width, and why."""
        from dslim.models.convert.report import describe

        return describe(self)
