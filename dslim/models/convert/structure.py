"""Channel rules of the operations that move, reshape, split and join tensors, run on the labels themselves.

At a subnet every tensor holds only its active channels, in their original order. An operation is safe when running
it on that narrower tensor gives what running it on the whole tensor and then dropping the inactive channels gives:
- moving and merging dimensions (permute, transpose, flatten, a view that merges) always is;
- concatenating along a channel dimension always is; along another dimension the operands' channels are tied;
- a view that splits a channel dimension into several (a channel shuffle's `(g, C/g)`) is safe when exactly one of
  the new dimensions changes size with the width (`-1` or computed from `x.size()`); the blocks along the others are
  tied position by position; a channel dimension reshaped to a literal size is pinned (it would break at a subnet);
- splitting a channel dimension (`chunk`, `split`, `narrow`, `x[:, a:b]`) becomes a `Split` that computes the
  parts' sizes from the active channels, whatever sizes the code wrote.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx

from dslim.models.convert import atoms as A
from dslim.models.convert.ops import encode

FLATTEN = ("flatten",)
RESHAPE = ("view", "reshape", "unflatten", "view_as", "reshape_as")


def structure(w, node: fx.Node, kind: str, module, args, kwargs, value, margs, mkwargs) -> object:  # type: ignore[no-untyped-def]
    from dslim.models.convert.analysis import none_like, source_of

    if kind in ("cat", "concat", "concatenate", "stack"):
        return join(w, node, kind, args, kwargs, margs, value)
    x, labels = args[0], margs[0]
    if not isinstance(x, torch.Tensor) or not isinstance(labels, torch.Tensor):
        return none_like(value)
    where = source_of(node)
    if A.has_atoms(labels) and not A.dims(labels) and x.numel() > 1:
        w.pin(labels, f"{where}: {kind} of a single channel")
        return none_like(value)
    full = A.expand(labels, x.shape)
    if kind in ("chunk", "split", "tensor_split", "narrow", "getitem", "unbind"):
        return split(w, node, kind, args, kwargs, labels, full, value)
    rest = [_real_of(a) for a in args[1:]]
    if module is not None:
        out = module(full)
    elif node.op == "call_method":
        out = getattr(full, node.target)(*rest, **kwargs)
    else:
        out = node.target(full, *rest, **kwargs)
    out = A.compress(out)
    if kind in RESHAPE or (module is not None and kind == "unflatten"):
        varies = _varying_dims(w, node, kind, module, args, kwargs, margs, labels, value)
        out_dims = A.dims(out)
        moving = [d for d in out_dims if d in varies]
        if len(moving) != 1:
            why = "a fixed channel count" if not moving else "several dimensions that change with the width"
            w.pin(labels, f"{where}: {kind} to {why}")
            return A.none(value.dim())
        v = moving[0]
        fixed = [d for d in out_dims if d != v]
        if fixed:
            block = out.permute(*[d for d in range(out.dim()) if d != v], v).reshape(-1, out.shape[v])
            for row in block[1:]:
                w.an.atoms.tie(block[0], row)
    return out


def _real_of(a: object) -> object:
    return a


def _varying_dims(w, node, kind, module, args, kwargs, margs, labels, value) -> set[int]:  # type: ignore[no-untyped-def]
    """Output dimensions whose size changes with the width at run time."""
    from dslim.models.convert.analysis import Size

    x = args[0]
    if kind in ("view_as", "reshape_as"):
        return set(A.dims(margs[1])) if isinstance(margs[1], torch.Tensor) else set()
    if kind == "unflatten":
        if module is not None:
            dim, sizes, smeta = module.dim, module.unflattened_size, [None] * len(module.unflattened_size)
        else:
            dim = kwargs.get("dim", args[1])
            sizes = kwargs.get("sizes", args[2] if len(args) > 2 else None)
            smeta = margs[2] if len(margs) > 2 else [None] * len(sizes)
        dim %= x.dim()
        out = set()
        for i, (s, m) in enumerate(zip(sizes, smeta)):
            if s == -1 or isinstance(m, Size):
                out.add(dim + i)
        for d in A.dims(labels):
            if d < dim:
                out.add(d)
            elif d > dim:
                out.add(d + len(sizes) - 1)
        return out
    shape, smeta = args[1:], margs[1:]
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape, smeta = shape[0], smeta[0] if isinstance(smeta[0], (tuple, list)) else [None] * len(shape[0])
    if "shape" in kwargs:
        shape, smeta = kwargs["shape"], [None] * len(kwargs["shape"])
    return {i for i, (s, m) in enumerate(zip(shape, smeta)) if s == -1 or isinstance(m, Size)}


def split(w, node: fx.Node, kind: str, args, kwargs, labels, full, value) -> object:  # type: ignore[no-untyped-def]
    """Splitting: along a channel dimension a `Split` module computes the parts at run time."""
    from dslim.models.convert.analysis import Layer, source_of

    x = args[0]
    where = source_of(node)
    index = None
    if kind == "getitem":
        dim, parts, index = _index_parts(x, args[1])
        if dim is None and index is None:
            return _apply_index(w, node, labels, full, args[1], value)
    elif kind == "narrow":
        dim = kwargs.get("dim", args[1]) % x.dim()
        start = kwargs.get("start", args[2] if len(args) > 2 else None)
        length = kwargs.get("length", args[3] if len(args) > 3 else None)
        parts = [(int(start), int(start) + int(length))]
    else:
        dim = kwargs.get("dim", args[2] if len(args) > 2 else 0) % x.dim()
        sizes = [v.shape[dim] for v in value] if kind != "unbind" else [1] * x.shape[dim]
        starts = np.cumsum([0] + sizes)
        parts = [(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]
    if dim is None or dim not in A.dims(labels):
        if index is not None:
            return _apply_index(w, node, labels, full, args[1], value)
        pieces = [full.narrow(dim, a, b - a) for a, b in parts] if dim is not None else []
        if kind == "unbind":
            return tuple(A.compress(p.squeeze(dim)) for p in pieces)
        return A.compress(pieces[0]) if kind in ("narrow", "getitem") else tuple(A.compress(p) for p in pieces)
    if kind == "unbind" or (kind == "getitem" and index == "int"):
        w.pin(labels, f"{where}: one channel picked by its index")
        return A.none(value.dim()) if isinstance(value, torch.Tensor) else tuple(A.none(v.dim()) for v in value)
    line = A.line(labels, dim, x.shape[dim])
    for a, b in parts:
        w.an.split_parts.append(line[a:b])
    rest = None
    if kind == "getitem":
        rest = list(args[1]) if isinstance(args[1], tuple) else [args[1]]
    mode = "narrow" if kind in ("narrow", "getitem") else "split"
    path = w.op_path(node)
    spec = {"type": "Split", "args": {"dim": dim, "parts": [list(p) for p in parts], "mode": mode}}
    w.an.layers.setdefault(path, Layer(path, spec, {"in": w.an.site(line)}, {}))
    pieces = [full.narrow(dim, a, b - a) for a, b in parts]
    name = lambda n: n.name if isinstance(n, fx.Node) else None  # noqa: E731
    if rest is None:
        w.emit(node, "module", path, (node.args[0],))
        w.skip.add(node.name)
        return tuple(A.compress(p) for p in pieces) if mode == "split" else A.compress(pieces[0])
    # x[..., a:b, ...]: the channel slice by the Split, the rest of the index after it
    split_name = f"{node.name}__split"
    w.nodes.append({"op": "module", "name": split_name, "target": path,
                    "args": encode((node.args[0],), name), "kwargs": {}})  # fmt: skip
    index_args = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
    real_index = list(args[1]) if isinstance(args[1], tuple) else [args[1]]
    position = _position(x, real_index, dim)
    index_args = list(index_args)
    index_args[position] = slice(None)
    w.nodes.append({"op": "function", "name": node.name, "target": "operator.getitem",
                    "args": [{"node": split_name}, encode(tuple(index_args), name)], "kwargs": {}})  # fmt: skip
    w.skip.add(node.name)
    real_index[position] = slice(None)
    return A.compress(pieces[0][tuple(real_index)])


def _apply_index(w, node, labels, full, index, value) -> object:  # type: ignore[no-untyped-def]
    from dslim.models.convert.analysis import source_of

    if _advanced(index):
        w.pin(labels, f"{source_of(node)}: indexing with tensors")
        return A.none(value.dim())
    return A.compress(full[index])


def _advanced(index: object) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, (torch.Tensor, list)) for i in items)


def _position(x: torch.Tensor, index: list, dim: int) -> int:
    """The position in `index` of the component that indexes dimension `dim` of `x`."""
    d = 0
    for i, item in enumerate(index):
        if item is None:
            continue
        if item is Ellipsis:
            d += x.dim() - sum(1 for it in index if it is not None and it is not Ellipsis)
            continue
        if d == dim:
            return i
        d += 1
    raise AssertionError("index component not found")


def _index_parts(x: torch.Tensor, index: object) -> tuple[int | None, list, str | None]:
    """For `x[index]`: the one dimension it slices with a proper slice or an int (and its part), else None."""
    items = list(index) if isinstance(index, tuple) else [index]
    if _advanced(index):
        return None, [], None
    dims: list[tuple[int, object]] = []
    d = 0
    for item in items:
        if item is None:
            continue
        if item is Ellipsis:
            d += x.dim() - sum(1 for it in items if it is not None and it is not Ellipsis)
            continue
        dims.append((d, item))
        d += 1
    cut = [
        (k, it)
        for k, it in dims
        if isinstance(it, int) or (isinstance(it, slice) and it.indices(x.shape[k]) != (0, x.shape[k], 1))
    ]
    if len(cut) != 1:
        return (None, [], "several") if cut else (None, [], None)
    k, it = cut[0]
    if isinstance(it, int):
        return k, [(it % x.shape[k], it % x.shape[k] + 1)], "int"
    start, stop, step = it.indices(x.shape[k])
    if step != 1:
        return None, [], "step"
    return k, [(start, stop)], "slice"


def join(w, node: fx.Node, kind: str, args, kwargs, margs, value) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """cat along a channel dimension concatenates atoms; along another (and stack) ties the operands."""
    from dslim.models.convert.analysis import source_of

    tensors = list(args[0])
    metas = [m if isinstance(m, torch.Tensor) else A.none(t.dim()) for t, m in zip(tensors, margs[0])]
    dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
    if kind == "stack":
        dim %= tensors[0].dim() + 1
        base = metas[0]
        for m in metas[1:]:
            a, b = torch.broadcast_tensors(base, m)
            w.an.atoms.tie(a, b)
        return base.unsqueeze(dim)
    dim %= tensors[0].dim()
    if any(dim in A.dims(m) for m in metas):
        others = {d for m in metas for d in A.dims(m) if d != dim}
        if others:
            w.pin(metas, f"{source_of(node)}: concatenation of tensors with channels along several dimensions")
            return A.none(value.dim())
        target = [max(m.shape[d] for m in metas) for d in range(value.dim())]
        parts = []
        for t, m in zip(tensors, metas):
            size = list(target)
            size[dim] = t.shape[dim]
            parts.append(m.expand(*size))
        return A.compress(torch.cat(parts, dim))
    base = metas[0]
    for m in metas[1:]:
        a, b = torch.broadcast_tensors(base, m)
        w.an.atoms.tie(a, b)
        base = torch.where(a >= 0, a, b)
    return A.compress(base)
