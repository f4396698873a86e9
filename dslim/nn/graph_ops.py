"""The non-layer nodes of a converted model that still follow its channels: a tensor the model uses directly (a layer
scale), a split along a channel dimension, and calls the complexity model must see (average pooling, products).

Like the layers of `dslim.nn.indexed`, each reads its layouts' active positions at the current subnet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from dslim.errors import UserError
from dslim.nn.base import LayerCost, SlimModule, copy_
from dslim.nn.indexed import _Graph
from dslim.nn.layouts import take


class GraphParam(_Graph):
    """A tensor the model uses directly (a layer scale, a normalization constant), sliced along one dimension."""

    def __init__(self, shape: Sequence[int], dtype: torch.dtype, parameter: bool, dim: int | None) -> None:
        super().__init__()
        self.dim, self.parameter = dim, parameter
        value = torch.zeros(tuple(shape), dtype=dtype)
        if parameter:
            self.weight = nn.Parameter(value)
        else:
            self.register_buffer("weight", value)

    def forward(self) -> torch.Tensor:
        return self.weight if self.dim is None else take(self.weight, self.dim, self.index("in", self.weight))  # type: ignore[return-value]

    def cost(self, x: torch.Tensor | None, y: torch.Tensor) -> tuple[None, int]:
        return None, y.numel() if self.parameter else 0

    def copy_from(self, source: SlimModule, keys: Sequence[str]) -> None:
        value = source.weight  # type: ignore[attr-defined]
        copy_(self, weight=value if self.dim is None else take(value, self.dim, self.src("in", value)))


class GraphSplit(_Graph):
    """`chunk`, `split`, `narrow` or a slice along a channel dimension, with the parts' sizes counted from the
    active channels at run time (the code's own sizes are those of the whole model)."""

    def __init__(self, dim: int, parts: Sequence[Sequence[int]], mode: str) -> None:
        super().__init__()
        self.dim, self.parts, self.mode = dim, [tuple(p) for p in parts], mode
        self._sizes: tuple[object, list[int], int] | None = None

    def sizes(self) -> tuple[list[int], int]:
        """Each part's active size, and the active positions before the first part."""
        current = self.book.current
        if self._sizes is not None and self._sizes[0] is current:
            return self._sizes[1], self._sizes[2]
        index = current[self.layouts["in"]]
        n = self.book.sizes[self.layouts["in"]]
        active = np.ones(n, bool) if index is None else np.arange(n) < index if isinstance(index, int) else \
            np.isin(np.arange(n), index)  # fmt: skip
        sizes = [int(active[a:b].sum()) for a, b in self.parts]
        before = int(active[: self.parts[0][0]].sum())
        object.__setattr__(self, "_sizes", (current, sizes, before))
        return sizes, before

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        sizes, before = self.sizes()
        if self.mode == "split":
            return torch.split(x, sizes, self.dim)
        return x.narrow(self.dim, before, sizes[0])


class GraphOp(_Graph):
    """A call the complexity model must see: average pooling (costed as its input's elements, as every average pool
    here) and products whose channels are fixed (matmul, einsum, a functional conv of computed weights)."""

    def __init__(self, fn: str | None, call: Callable | None, method: bool, module: nn.Module | None, cost: str):
        super().__init__()
        self.fn, self.call, self.method, self.kind = fn, call, method, cost
        self.inner = module
        self._args: list = []

    def forward(self, *args: object, **kwargs: object) -> object:
        object.__setattr__(self, "_args", [a.shape if isinstance(a, torch.Tensor) else a for a in args])
        if self.inner is not None:
            return self.inner(*args, **kwargs)
        if self.method:
            return getattr(args[0], self.fn)(*args[1:], **kwargs)  # type: ignore[arg-type]
        return self.call(*args, **kwargs)  # type: ignore[misc]

    def cost(self, x: torch.Tensor, y: torch.Tensor) -> tuple[LayerCost | None, int]:
        if self.kind == "pool":
            c = x.shape[1]
            return LayerCost("per_input", None, None, c, c, x.shape[2] * x.shape[3], self.count("in", c), None), 0
        if self.kind != "matmul":
            return None, 0
        macs = _product_macs(str(self.fn).rpartition(".")[2], self._args, y)
        if macs is None:
            raise UserError(f"dslim cannot count the MACs of {self.fn} (a layer of a converted model)")
        batch = next(a for a in self._args if isinstance(a, torch.Size))[0]
        macs //= max(1, batch)
        return LayerCost("per_input", None, None, macs, macs, 1), 0


def _product_macs(fn: str, args: list, y: torch.Tensor) -> int | None:
    """Multiply-accumulates of a product of tensors from its operands' shapes, as the layers count theirs."""
    shapes = [a for a in args if isinstance(a, torch.Size)]
    if fn in ("matmul", "mm", "bmm"):
        return y.numel() * shapes[0][-1]
    if fn in ("addmm", "baddbmm"):
        return y.numel() * shapes[1][-1]
    if fn == "linear":
        return y.numel() * shapes[1][-1]
    if fn == "conv2d":
        return y.numel() * int(np.prod(shapes[1][1:]))
    if fn == "conv_transpose2d":
        return int(np.prod(shapes[0])) * int(np.prod(shapes[1][1:]))
    if fn == "einsum" and isinstance(args[0], str) and len(shapes) == 2:
        sizes: dict[str, int] = {}
        for letters, shape in zip(args[0].replace(" ", "").split("->")[0].split(","), shapes):
            sizes.update(zip(letters, shape))
        return int(np.prod(list(sizes.values())))
    return None
