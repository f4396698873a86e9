"""Slimmable layers of a converted model: they slice their weights to the active positions of their layouts.

The same protocol as the built-in layers (`follow` / `cost` / `copy_from` / `to_plain`), but a layer's input and
output channels are layouts of the network's `Layouts` (`dslim.nn.layouts`) instead of one group sliced from the
front: a plain prefix where that is what the subnet means (the common case, as cheap as a built-in layer), an index
where it is not. A grouped convolution keeps its group width and runs as many groups as its active channels fill.

A layer built at one subnet's widths for export holds `source` indices: where its channels are in the supernet's
layer, so `copy_from` takes exactly those weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dslim.nn.base import LayerCost, SlimModule, copy_
from dslim.nn.batchnorm import SlimBatchNorm2d
from dslim.nn.layouts import Layouts, as_index, take


class _Graph(SlimModule):
    """What every layer of a converted model shares: its network's layouts and where its channels came from."""

    book: Layouts
    layouts: dict[str, int | None]
    source: dict[str, np.ndarray | None]

    def setup(self, book: Layouts, layouts: Mapping[str, int | None], source: Mapping | None) -> None:
        object.__setattr__(self, "book", book)
        self.layouts = dict(layouts)
        self.source = dict(source or {})
        self.mask: torch.Tensor | None = None

    def index(self, name: str, t: torch.Tensor) -> None | int | torch.Tensor:
        return self.book.at(self.layouts.get(name), t.device)

    def src(self, name: str, like: torch.Tensor) -> None | int | torch.Tensor:
        return as_index(self.source.get(name), like.device)

    def count(self, name: str, full: int):  # type: ignore[no-untyped-def]
        return self.book.count_fn(self.layouts.get(name), full)

    def mask_channels(self, masks: Mapping[str, torch.Tensor] | None) -> None:
        where = self.layouts.get("mask")
        self.mask = None if masks is None or where is None else self.book.masks(where, masks)

    def masked(self, y: torch.Tensor, dim: int) -> torch.Tensor:
        if self.mask is None:
            return y
        m = take(self.mask, 0, self.book.at(self.layouts["mask"], y.device))
        shape = [1] * y.dim()
        shape[dim] = -1
        return y * m.view(shape)


def _dense_cost(kind: str, coef: int, c_in: int, c_out: int, in_count, out_count) -> LayerCost:  # type: ignore[no-untyped-def]
    return LayerCost(kind, None, None, c_in, c_out, coef, in_count, out_count)


class _Conv(_Graph):
    """Cost and copying shared by convolutions and transposed ones. `rows` names the channels along the weight's
    first dimension (`out` for a conv, `in` for a transposed conv): a grouped conv runs whole groups of them."""

    rows = "out"

    def cost(self, x: torch.Tensor, y: torch.Tensor) -> tuple[LayerCost, int]:
        kk = self.kernel_size[0] * self.kernel_size[1]  # type: ignore[attr-defined]
        spatial = y.shape[2] * y.shape[3] if self.rows == "out" else x.shape[2] * x.shape[3]  # transposed: scattered
        c_in, c_out = x.shape[1], y.shape[1]
        bias = c_out if self.bias is not None else 0  # type: ignore[attr-defined]
        full = {"in": self.in_channels, "out": self.out_channels}  # type: ignore[attr-defined]
        if self.groups == 1:  # type: ignore[attr-defined]
            cost = _dense_cost("dense", kk * spatial, c_in, c_out, self.count("in", full["in"]),
                               self.count("out", full["out"]))  # fmt: skip
            return cost, c_in * c_out * kk + bias
        width = self.weight.shape[1]  # type: ignore[attr-defined]
        c = c_out if self.rows == "out" else c_in
        cost = _dense_cost("per_input", kk * spatial * width, c, c, self.count(self.rows, full[self.rows]), None)
        return cost, c * width * kk + bias

    def copy_from(self, source: SlimModule, keys: Sequence[str]) -> None:
        cols = "in" if self.rows == "out" else "out"
        w = take(source.weight, 0, self.src(self.rows, source.weight))  # type: ignore[arg-type]
        if source.groups == 1:  # type: ignore[attr-defined]
            w = take(w, 1, self.src(cols, w))
        copy_(self, weight=w, bias=take(source.bias, 0, self.src("out", w)))  # type: ignore[arg-type]


class GraphConv(nn.Conv2d, _Conv):
    """Conv2d over layouts; a grouped conv runs as many groups of its width as its active input holds."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        oi = self.index("out", x)
        w, b = take(self.weight, 0, oi), take(self.bias, 0, oi)
        groups = 1
        if self.groups == 1:
            w = take(w, 1, self.index("in", x))
        else:
            groups = x.shape[1] // self.weight.shape[1]
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return self.masked(F.conv2d(x, w, b, self.stride, 0, self.dilation, groups), 1)
        return self.masked(F.conv2d(x, w, b, self.stride, self.padding, self.dilation, groups), 1)

    def to_plain(self, key: str | None) -> nn.Module:
        out = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                        self.dilation, self.groups, self.bias is not None, self.padding_mode)  # fmt: skip
        copy_(out, weight=self.weight, bias=self.bias)
        return out


class GraphConvTranspose(nn.ConvTranspose2d, _Conv):
    """ConvTranspose2d over layouts (weight `in x out/groups x k x k`)."""

    rows = "in"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ii, oi = self.index("in", x), self.index("out", x)
        w = take(self.weight, 0, ii)
        groups = 1
        if self.groups == 1:
            w = take(w, 1, oi)
        else:
            groups = x.shape[1] // (self.in_channels // self.groups)
        y = F.conv_transpose2d(x, w, take(self.bias, 0, oi), self.stride, self.padding, self.output_padding, groups,
                               self.dilation)  # fmt: skip
        return self.masked(y, 1)

    def to_plain(self, key: str | None) -> nn.Module:
        out = nn.ConvTranspose2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                                 self.output_padding, self.groups, self.bias is not None, self.dilation)  # fmt: skip
        copy_(out, weight=self.weight, bias=self.bias)
        return out


class GraphLinear(nn.Linear, _Graph):
    """Linear over layouts of its last dimension (a flattened feature map's inputs repeat each channel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        oi = self.index("out", x)
        w = take(take(self.weight, 0, oi), 1, self.index("in", x))
        return self.masked(F.linear(x, w, take(self.bias, 0, oi)), -1)

    def cost(self, x: torch.Tensor, y: torch.Tensor) -> tuple[LayerCost, int]:
        c_in, c_out = x.shape[-1], y.shape[-1]
        rows = x[0].numel() // c_in if x.dim() > 2 else 1  # a linear over channels-last positions
        cost = _dense_cost("dense", rows, c_in, c_out, self.count("in", self.in_features),
                           self.count("out", self.out_features))  # fmt: skip
        return cost, c_in * c_out + (c_out if self.bias is not None else 0)

    def copy_from(self, source: SlimModule, keys: Sequence[str]) -> None:
        w = take(take(source.weight, 0, self.src("out", source.weight)), 1, self.src("in", source.weight))  # type: ignore[arg-type]
        copy_(self, weight=w, bias=take(source.bias, 0, self.src("out", w)))  # type: ignore[arg-type]

    def to_plain(self, key: str | None) -> nn.Module:
        out = nn.Linear(self.in_features, self.out_features, self.bias is not None)
        copy_(out, weight=self.weight, bias=self.bias)
        return out


class GraphBatchNorm(SlimBatchNorm2d, _Graph):
    """BatchNorm (1d or 2d) over a layout, with per-subnet statistics as `SlimBatchNorm2d`."""

    def front(self, t: torch.Tensor, channels: int) -> torch.Tensor:
        return take(t, 0, self.index("in", t))  # type: ignore[return-value]

    def pick(self, t: torch.Tensor) -> torch.Tensor:
        return take(t, 0, self.src("in", t))  # type: ignore[return-value]

    def channels(self, subnet: Mapping[str, int]) -> int:
        return self.book.count(self.layouts.get("in"), subnet, self.num_features)

    def mask_channels(self, masks: Mapping[str, torch.Tensor] | None) -> None:
        where = self.layouts.get("in")
        self.mask = None if masks is None or where is None else self.book.masks(where, masks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.masked(super().forward(x), 1)  # after normalization, which would undo a mask before it


class GraphLayerNorm(_Graph):
    """LayerNorm over the last dimension's layout (channels-last), or a fixed LayerNorm over several dimensions."""

    def __init__(self, normalized_shape: Sequence[int], eps: float, affine: bool, bias: bool) -> None:
        super().__init__()
        self.normalized_shape, self.eps = tuple(normalized_shape), eps
        self.weight = nn.Parameter(torch.ones(self.normalized_shape)) if affine else None
        self.bias = nn.Parameter(torch.zeros(self.normalized_shape)) if affine and bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layouts.get("in") is None:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        i = self.index("in", x)
        y = F.layer_norm(x, (x.shape[-1],), take(self.weight, 0, i), take(self.bias, 0, i), self.eps)
        return self.masked(y, -1)

    def mask_channels(self, masks: Mapping[str, torch.Tensor] | None) -> None:
        where = self.layouts.get("in")
        self.mask = None if masks is None or where is None else self.book.masks(where, masks)
        if self.mask is not None:
            self.layouts["mask"] = where

    def cost(self, x: torch.Tensor, y: torch.Tensor) -> tuple[None, int]:
        n = x.shape[-1] if self.layouts.get("in") is not None else int(np.prod(self.normalized_shape))
        return None, n * ((self.weight is not None) + (self.bias is not None))

    def copy_from(self, source: SlimModule, keys: Sequence[str]) -> None:
        copy_(self, weight=take(source.weight, 0, self.src("in", source.weight)) if self.weight is not None else None,  # type: ignore[arg-type]
              bias=take(source.bias, 0, self.src("in", source.bias)) if self.bias is not None else None)  # type: ignore[arg-type]  # fmt: skip

    def to_plain(self, key: str | None) -> nn.Module:
        out = nn.LayerNorm(self.normalized_shape, self.eps, self.weight is not None, bias=self.bias is not None)
        copy_(out, weight=self.weight, bias=self.bias)
        return out
