"""Channel rules of functions and tensor methods: elementwise operations tie their operands, reductions over
channels drop them, pooling and resizing pass them, sizes carry the atoms they measure.

Sizes (`x.size(1)`, `x.shape`) are followed as `Size` values: a tensor created with a channel size gets those
channels' atoms, a reshape whose new sizes come from `x.size()` follows the width at run time
(`dslim.models.convert.structure`). Average pooling and products of fixed channels run through an `Op` module so the
complexity model costs them.
"""

from __future__ import annotations

import numpy as np
import torch

from dslim.errors import UserError
from dslim.models.convert import atoms as A
from dslim.models.convert.analysis import Pass, Size, flat, line_of, none_like, source_of

ELEMENTWISE = set(
    """abs acos add addcmul addcdiv asin atan atan2 ceil clamp clamp_ clamp_max clamp_min clip cos cosh
div div_ eq erf exp expm1 floor floor_ fmod ge gt hardshrink isfinite isnan le lerp log log1p log2 lt maximum minimum
mul mul_ ne neg pow reciprocal relu relu_ relu6 round rsqrt sigmoid sigmoid_ sign sin sinh sqrt square sub sub_ tanh
trunc where leaky_relu elu selu celu gelu silu mish hardswish hardsigmoid hardtanh softplus softsign logsigmoid dropout
dropout2d alpha_dropout add_ bernoulli_ float type_as detach clone masked_fill uniform_ normal_ fill_ zero_ truediv
floordiv mod pos iadd isub imul itruediv contiguous""".split()
)
REDUCTIONS = set("mean sum amax amin std var prod norm logsumexp".split())
ALONG_DIM = set("softmax log_softmax normalize".split())
POSITIONAL = set("cumsum cumprod flip roll argmax argmin".split())
STRUCTURE = set(
    """view reshape unflatten view_as reshape_as permute transpose swapaxes movedim squeeze unsqueeze expand
expand_as t flatten repeat tile getitem chunk split tensor_split narrow cat concat concatenate stack unbind""".split()
)
CREATE_LIKE = set("zeros_like ones_like full_like empty_like rand_like randn_like bernoulli".split())
CREATE = set("zeros ones full empty rand randn arange new_zeros new_ones new_empty new_full".split())
POOLS = set("avg_pool2d adaptive_avg_pool2d".split())
SPATIAL = set("max_pool2d adaptive_max_pool2d interpolate upsample pad".split())
MATMUL = set("matmul bmm mm einsum baddbmm addmm conv2d conv_transpose2d linear".split())


def rule(w: Pass, node, name, kind, args, kwargs, margs, mkwargs, value) -> object:  # type: ignore[no-untyped-def]
    where = source_of(node)
    tensors = [m for m in flat((margs, mkwargs)) if isinstance(m, torch.Tensor)]
    if kind == "getattr" and name == "builtins.getattr":
        return attribute(w, args, margs, value, where)
    if kind == "getitem" and not isinstance(args[0], torch.Tensor):
        return margs[0][args[1]] if isinstance(margs[0], (tuple, list)) else None
    if kind in ("add", "mul") and isinstance(value, (tuple, list)):
        return sequence_op(w, kind, args, margs, value)
    if kind in ("size", "dim", "numel") or not isinstance(value, (torch.Tensor, tuple, list)):
        return scalar(w, node, kind, args, margs, value)
    if not tensors and not isinstance(value, torch.Tensor):
        return scalar(w, node, kind, args, margs, value)
    if kind in ("max", "min") and not (len(tensors) > 1 and isinstance(value, torch.Tensor)):
        kind = "amax" if kind == "max" else "amin"
        if isinstance(value, tuple):  # (values, indices): the indices name positions
            w.pin(tensors, f"{where}: {name} with indices")
            return (A.none(value[0].dim()), A.none(value[1].dim()))
    if kind in ELEMENTWISE:
        return elementwise(w, node, args, kwargs, margs, mkwargs, value)
    if kind in REDUCTIONS:
        return reduce(w, node, kind, args, kwargs, margs, value)
    if kind in ALONG_DIM:
        return margs[0]
    if kind in POSITIONAL:
        return positional(w, node, name, args, kwargs, margs, value)
    if kind in STRUCTURE:
        return structure(w, node, kind, None, args, kwargs, value, margs, mkwargs)
    if kind == "channel_shuffle":
        return shuffle(w, margs[0], args[0], args[1], value)
    if kind in CREATE_LIKE:
        return margs[0] if isinstance(margs[0], torch.Tensor) else A.none(value.dim())
    if kind in CREATE:
        return create(w, node, args, margs, value)
    if kind in POOLS or kind in SPATIAL:
        meta = spatial(w, margs[0], args[0], value, name)
        if kind in POOLS:
            w.costed(node, name, "pool", line_of(meta, 1, value))
        return meta
    if kind in MATMUL:
        w.pin(tensors, f"{where}: {name} (no channel rule)")
        w.costed(node, name, "matmul", None)
        return A.none(value.dim()) if isinstance(value, torch.Tensor) else None
    w.pin(tensors, f"{where}: {name} (no channel rule)")
    return none_like(value)


# -- rules --------------------------------------------------------------------------------------------------
def attribute(w: Pass, args, margs, value, where) -> object:  # type: ignore[no-untyped-def]
    name = args[1]
    from dslim.models.convert.ops import ATTRIBUTES

    if name not in ATTRIBUTES:
        raise UserError(f"{where}: dslim cannot store a read of the attribute {name!r}")
    if name == "shape":
        return tuple(size_of(w, margs[0], args[0], d) for d in range(args[0].dim()))
    if name == "T":
        return A.compress(A.expand(margs[0], args[0].shape).T)
    return None


def size_of(w: Pass, labels: object, x: torch.Tensor, d: int) -> Size | None:
    if not isinstance(labels, torch.Tensor):
        return None
    line = A.line(labels, d, x.shape[d])
    if not (line >= 0).any() or (labels.shape[d] == 1 and x.shape[d] > 1):
        return None
    return Size(line, line[line >= 0])


def scalar(w: Pass, node, kind, args, margs, value) -> object:  # type: ignore[no-untyped-def]
    if kind == "size" and isinstance(args[0], torch.Tensor):
        x = args[0]
        if len(args) > 1 or "dim" in node.kwargs:
            d = args[1] if len(args) > 1 else node.kwargs["dim"]
            return size_of(w, margs[0], x, d)
        return tuple(size_of(w, margs[0], x, d) for d in range(x.dim()))
    if kind == "numel" and isinstance(args[0], torch.Tensor):
        deps = margs[0][margs[0] >= 0].numpy() if isinstance(margs[0], torch.Tensor) else np.zeros(0, np.int64)
        return Size(None, deps) if deps.size else None
    deps = [m.deps for m in flat(margs) if isinstance(m, Size)]
    deps += [t[t >= 0].numpy() for t in flat(margs) if isinstance(t, torch.Tensor)]
    deps = [d for d in deps if d.size]
    if not deps:
        return none_like(value)
    if isinstance(value, (tuple, list)):
        return type(value)(Size(None, np.concatenate(deps)) for _ in value)
    if kind in ("int", "float", "floor", "ceil") and len(margs) == 1 and isinstance(margs[0], Size):
        return margs[0]
    return Size(None, np.concatenate(deps))


def sequence_op(w: Pass, kind, args, margs, value) -> object:  # type: ignore[no-untyped-def]
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


def elementwise(w: Pass, node, args, kwargs, margs, mkwargs, value) -> object:  # type: ignore[no-untyped-def]
    if not isinstance(value, torch.Tensor):
        return None
    pairs = [(a, m) for a, m in zip(flat((args, kwargs)), flat((margs, mkwargs))) if isinstance(a, torch.Tensor)]
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
        w.an.atoms.tie(both[0], both[1])
        out = torch.where(both[0] >= 0, both[0], both[1])
        _check_full(w, out, shape, out_shape, node)
    if out is None:
        return A.none(value.dim())
    for real, labels in pairs:
        if isinstance(labels, torch.Tensor) and real.dim() <= value.dim():
            _check_full(w, out, (1,) * (value.dim() - real.dim()) + tuple(real.shape), out_shape, node, labels)
    return A.compress(out)


def _check_full(w: Pass, out, shape, out_shape, node, labels=None) -> None:  # type: ignore[no-untyped-def]
    """An operand without atoms along a channel dimension of the result has a fixed size there: pin."""
    if labels is None:
        return
    lab = labels.view((1,) * (len(shape) - labels.dim()) + tuple(labels.shape))
    for d in A.dims(out):
        if shape[d] == out_shape[d] > 1 and lab.shape[d] == 1 and not (lab >= 0).any():
            w.pin(out, f"{source_of(node)}: an operand of fixed size meets channels")
            return


def reduce(w: Pass, node, kind, args, kwargs, margs, value) -> object:  # type: ignore[no-untyped-def]
    x, labels = args[0], margs[0]
    if not isinstance(value, torch.Tensor) or not isinstance(labels, torch.Tensor):
        return none_like(value)
    dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
    keep = kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False)
    if dims is None:
        return A.none(value.dim())
    dims = [d % x.dim() for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
    channel = [d for d in A.dims(labels) if d in dims]
    rest = [d for d in A.dims(labels) if d not in dims]
    if channel and rest:
        w.pin(labels, f"{source_of(node)}: a reduction over some of several channel dimensions")
        return A.none(value.dim())
    if channel:
        return A.none(value.dim())
    if kind == "mean" and x.dim() == 4 and sorted(dims) == [2, 3]:  # global average pooling: costed as a pool
        w.costed(node, "torch.mean", "pool", A.line(labels, 1, x.shape[1]))
    out = labels
    for d in sorted(dims, reverse=True):
        out = out.narrow(d, 0, 1) if keep else out.select(d, 0)
    return out.contiguous()


def positional(w: Pass, node, name, args, kwargs, margs, value) -> object:  # type: ignore[no-untyped-def]
    labels = margs[0]
    dims = kwargs.get("dims", kwargs.get("dim", args[-1] if len(args) > 1 else None))
    if not isinstance(labels, torch.Tensor):
        return none_like(value)
    dims = [d % args[0].dim() for d in (dims if isinstance(dims, (tuple, list)) else [dims])] if dims is not None \
        else list(range(args[0].dim()))  # fmt: skip
    if any(d in A.dims(labels) for d in dims):
        w.pin(labels, f"{source_of(node)}: {name} along channels (no channel rule)")
        return A.none(value.dim()) if isinstance(value, torch.Tensor) else None
    return labels if isinstance(value, torch.Tensor) and value.dim() == labels.dim() else none_like(value)


def spatial(w: Pass, labels, x, value, name) -> torch.Tensor:  # type: ignore[no-untyped-def]
    if not isinstance(labels, torch.Tensor) or not isinstance(x, torch.Tensor):
        return A.none(value.dim())
    if any(d >= x.dim() - 2 for d in A.dims(labels)) or labels.dim() != value.dim():
        w.pin(labels, f"{name} over a channel dimension")
        return A.none(value.dim())
    return labels


def create(w: Pass, node, args, margs, value) -> object:  # type: ignore[no-untyped-def]
    if not isinstance(value, torch.Tensor):
        return None
    sizes = [m for m in flat(margs) if isinstance(m, Size)]
    if not sizes:
        return A.none(value.dim())
    if len(sizes) == 1 and sizes[0].atoms is not None and len(sizes[0].atoms) in value.shape:
        dims = [d for d in range(value.dim()) if value.shape[d] == len(sizes[0].atoms)]
        return A.along(sizes[0].atoms, value.dim(), dims[-1])
    w.pin(sizes, f"{source_of(node)}: a tensor made with a size computed from a channel count")
    return A.none(value.dim())


def shuffle(w: Pass, labels, x, groups, value) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Channel shuffle: the `groups` blocks of channels are tied position by position, then interleaved."""
    if not isinstance(labels, torch.Tensor):
        return A.none(value.dim())
    line = A.line(labels, 1, x.shape[1]).reshape(groups, -1)
    for j in range(1, groups):
        w.an.atoms.tie(line[0], line[j])
    return A.along(line.T.reshape(-1), value.dim(), 1)


def structure(w: Pass, node, kind, module, args, kwargs, value, margs, mkwargs) -> object:  # type: ignore[no-untyped-def]
    """Reshaping, moving, splitting and joining: `dslim.models.convert.structure`."""
    from dslim.models.convert.structure import structure as rule

    return rule(w, node, kind, module, args, kwargs, value, margs, mkwargs)
