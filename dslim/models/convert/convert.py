"""`dslim.models.convert(model, example)`: any traced CNN becomes a `ConvertedSupernet` holding its weights.

1. Trace (`dslim.models.convert.trace`), then analyse channels on the example input (`dslim.models.convert.channels`).
2. Solve groups and ranks (`dslim.models.convert.groups`) and write the graph as data.
3. Check shapes: run the supernet at its smallest and at random subnets and compare every node's shape with what
   the analysis says it must be; where they differ (a channel count the code fixed in a way no rule saw), pin what
   that node touches and solve again. What remains is safe at every subnet the groups allow.
4. Copy the user's weights and BatchNorm statistics (the largest subnet's statistics; switchable and private
   BatchNorm start every named subnet from them too) and check that the largest subnet computes the user's model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from dslim.errors import UserError
from dslim.models.base import Supernet
from dslim.models.convert import atoms as A
from dslim.models.convert.analysis import Analysis, shapes_of
from dslim.models.convert.channels import Walker
from dslim.models.convert.groups import Solution, encode_layout, layout, param_dim, solve
from dslim.models.convert.trace import trace
from dslim.nn.indexed import GraphBatchNorm
from dslim.nn.layouts import as_index, take
from dslim.subnet import Subnet

NORMS = ("BatchNorm", "LayerNorm")
PRODUCERS = ("Conv2d", "ConvTranspose2d", "Linear")


def analyse(
    model: nn.Module, example: torch.Tensor, make: Callable[[dict], Supernet], channel_order: str, name: str
) -> tuple[dict, Analysis]:
    """The stored graph of `model` (and the analysis behind it), shape-checked on networks `make(graph)` builds."""
    meta = example.device.type == "meta" or any(p.device.type == "meta" for p in model.parameters())
    an = Analysis()
    was_training = model.training
    try:
        for mode, (gm, owner) in trace(model, name).items():
            owner.train(mode == "train")  # the eval pass must not touch the model's statistics
            with torch.no_grad():
                Walker(an, gm, mode).run(example)
    finally:
        model.train(was_training)
    importance = None
    if channel_order != "original" and not meta:
        importance = _importance(an, solve(an), channel_order)
    for _ in range(64):
        sol = solve(an, importance)
        spec = assemble(an, sol, name)
        if spec is None:
            continue  # a parameter was pinned: solve again
        if not sol.groups:
            raise UserError(f"{name} has no channel that dslim can slice (every layer stays at full width): "
                            f"{_summary(an, sol)}")  # fmt: skip
        if not shape_check(make(spec), an, sol, example):
            return spec, an
    raise RuntimeError(f"converting {name}: channel analysis did not settle (a dslim bug; please report): "
                       f"{an.atoms.pins[-1][1]}")  # fmt: skip


# -- the graph as data ---------------------------------------------------------------------------------------------
def assemble(an: Analysis, sol: Solution, name: str) -> dict | None:
    """The stored graph, or None after pinning a parameter that varies along several channel dimensions."""
    layouts: list[list[list[int]]] = []
    found: dict[bytes, int] = {}

    def add(g: np.ndarray, r: np.ndarray) -> int | None:
        if (g < 0).all():
            return None
        key = g.tobytes() + r.tobytes()
        if key not in found:
            found[key] = len(layouts)
            layouts.append(encode_layout(g, r))
        return found[key]

    modules: dict[str, dict] = {}
    normed: set[int] = set()
    for path, layer in an.layers.items():
        spec = {"type": layer.spec["type"], "args": dict(layer.spec.get("args", {})), "layouts": {}}
        for key, site in layer.sites.items():
            if spec["type"] == "Param":
                try:
                    dim, atoms = param_dim(sol, an.sites[site])
                except ValueError as e:
                    classes = set(np.asarray(e.args[0]).tolist())
                    an.atoms.pin(np.flatnonzero(np.isin(sol.classes, list(classes))),
                                 f"{path}: a parameter used along several channel dimensions")  # fmt: skip
                    return None
                spec["args"]["dim"] = dim
                if dim is None:
                    continue
            else:
                atoms = an.sites[site]
            g, r = layout(sol, atoms)
            spec["layouts"][key] = add(g, r)
            if spec["type"] in NORMS and key == "in" and (g >= 0).any():
                normed.update(np.unique(g[g >= 0]).tolist())
        modules[path] = spec
    for spec in modules.values():
        lay = spec["layouts"]
        if spec["type"] in NORMS and lay.get("in") is not None:
            lay["mask"] = lay["in"]
    for path, spec in modules.items():  # DMCP's soft masks: a group without normalization masks its layers' outputs
        out = spec["layouts"].get("out")
        if spec["type"] in PRODUCERS and out is not None:
            g, _ = layout(sol, an.sites[an.layers[path].sites["out"]])
            if set(np.unique(g[g >= 0]).tolist()) - normed:
                spec["layouts"]["mask"] = out
    from dslim.models.convert.report import report

    return {"format": "dslim.graph/1", "name": name, "groups": sol.groups, "layouts": layouts, "modules": modules,
            "graphs": an.graphs, "outputs": an.outputs, "report": report(an, sol)}  # fmt: skip


# -- the shape check -----------------------------------------------------------------------------------------------
def _check_subnets(net: Supernet, seed: int = 0) -> list[Subnet]:
    choices = net.group_choices()
    rng = np.random.default_rng(seed)
    out = [Subnet.of({g: c[0] for g, c in choices.items()})]
    out += [Subnet.of({g: int(rng.choice(c)) for g, c in choices.items()}) for _ in range(3)]
    return out


def shape_check(net: Supernet, an: Analysis, sol: Solution, example: torch.Tensor) -> bool:
    """Run `net` at a few subnets; pin what a node touches where its shape differs from the analysis. Returns
    whether anything was pinned."""
    active_class = _active_classes(sol)
    failure = [""]
    for subnet in _check_subnets(net):
        limits = {i: subnet[g["name"]] // g["unit"] for i, g in enumerate(sol.groups)}
        for mode, program in net._programs.items():
            names = [n["name"] for n in an.graphs[mode] if n["op"] not in ("input", "output")]
            bad: list[str] = []
            seen = [0]

            def observe(i: int, value: object, names=names, mode=mode, bad=bad, seen=seen, limits=limits) -> None:  # type: ignore[no-untyped-def]
                seen[0] = i
                name = names[i - 1]
                labels = an.labels[mode].get(name)
                if labels is None:
                    return
                want = _expected(labels, an.shapes[mode][name], sol, active_class, limits)
                if want is not None and shapes_of(value) != want:
                    bad.append(name)
                    raise _Mismatch

            bns = [m for m in net.modules() if isinstance(m, GraphBatchNorm)]
            for bn in bns:
                bn.track = False
            try:
                with net.using(subnet, train=True), torch.no_grad():
                    program.run(net.model, example, observe)
            except _Mismatch:
                pass
            except Exception as e:  # the node after the last one observed failed at this subnet
                bad.append(names[min(seen[0], len(names) - 1)])
                failure[0] = f" ({type(e).__name__}: {' '.join(str(e).split())[:120]})"
            finally:
                for bn in bns:
                    bn.track = bn.mode != "calibrated"
            if bad:
                name = bad[0]
                why = f"{an.where.get(name, name)}: its shape at a narrower subnet shows a fixed channel count"
                why += failure[0]
                for arg in an.inputs[mode].get(name, []) + [name]:
                    _pin_meta(an, an.labels[mode].get(arg), why)
                return True
    return False


class _Mismatch(Exception):
    pass


def _pin_meta(an: Analysis, meta: object, why: str) -> None:
    from dslim.models.convert.analysis import Size

    if isinstance(meta, torch.Tensor):
        an.atoms.pin(meta, why)
    elif isinstance(meta, Size):
        an.atoms.pin(meta.deps, why)
    elif isinstance(meta, (tuple, list)):
        for m in meta:
            _pin_meta(an, m, why)


def _active_classes(sol: Solution) -> dict[int, tuple[int, int]]:
    return {c: (sol.group_of[c], sol.rank_of[c]) for c in sol.group_of}


def _expected(labels, shape, sol: Solution, active_class, limits) -> object:  # type: ignore[no-untyped-def]
    if isinstance(shape, list):
        if not isinstance(labels, (tuple, list)) or len(labels) != len(shape):
            return None
        return [_expected(lab, s, sol, active_class, limits) for lab, s in zip(labels, shape)]
    if not isinstance(labels, torch.Tensor) or not isinstance(shape, tuple):
        return None
    flat = labels.flatten().tolist()
    active = []
    for a in flat:
        if a < 0:
            active.append(True)
            continue
        found = active_class.get(int(sol.classes[a]))
        active.append(found is None or found[1] < limits[found[0]])
    mask = torch.tensor(active).view(labels.shape)
    out = []
    for d, size in enumerate(shape):
        if labels.shape[d] == 1:
            out.append(size)
        else:
            other = [k for k in range(labels.dim()) if k != d]
            out.append(int(mask.permute(d, *other).reshape(labels.shape[d], -1).any(1).sum()))
    return tuple(out)


# -- weights -------------------------------------------------------------------------------------------------------
def load_weights(net: Supernet, an: Analysis) -> None:
    """The user's tensors into the supernet; BatchNorm statistics to the largest subnet (and every named one)."""
    modules = dict(net.model.named_modules())
    named = list(dict.fromkeys([net.largest(), *net.named_subnets().values()]))
    with torch.no_grad():
        for path, layer in an.layers.items():
            m = modules[path]
            for key in ("weight", "bias"):
                value = layer.source.get(key)
                if value is not None and getattr(m, key, None) is not None:
                    getattr(m, key).copy_(value)
            if isinstance(m, GraphBatchNorm):
                _load_bn(net, m, layer.source, named)


def _load_bn(net: Supernet, bn: GraphBatchNorm, source: Mapping, named: list[Subnet]) -> None:
    for subnet in named if bn.mode != "calibrated" else named[:1]:
        index = as_index(net.book.indices(subnet)[bn.layouts["in"]] if bn.layouts.get("in") is not None else None)

        def pick(t: torch.Tensor, index=index) -> torch.Tensor:  # type: ignore[no-untyped-def]
            return take(t, 0, index)  # type: ignore[return-value]

        bn.add_subnet(subnet.key, bn.channels(subnet))
        stats = bn.stats[subnet.key]
        stats.running_mean.copy_(pick(source["running_mean"]))
        stats.running_var.copy_(pick(source["running_var"]))
        if bn.mode == "switchable":
            affine = bn.affine[subnet.key]
            if source.get("weight") is not None:
                affine.weight.copy_(pick(source["weight"]))
            if source.get("bias") is not None:
                affine.bias.copy_(pick(source["bias"]))


def verify(net: Supernet, reference: torch.Tensor, example: torch.Tensor, name: str) -> None:
    """The largest subnet must compute the user's model."""
    with torch.no_grad(), net.using(net.largest(), train=False):
        out = net(example)
    error = float((out - reference).abs().max()) if out.shape == reference.shape else float("inf")
    if not error <= 1e-5 + 1e-5 * float(reference.abs().max()):
        raise RuntimeError(f"the converted {name} differs from the model by {error:.3g} at its largest subnet "
                           f"(a dslim bug; please report it with the model)")  # fmt: skip


# -- channel importance --------------------------------------------------------------------------------------------
def _importance(an: Analysis, sol: Solution, order: str) -> dict[int, float]:
    """Per class: the mean |BatchNorm scale| of its positions (`bn`; classes without BatchNorm fall back to `l1`),
    or the mean L1 norm of the weights producing it (`l1`)."""
    scores: dict[int, list[float]] = {}
    l1: dict[int, list[float]] = {}
    for layer in an.layers.values():
        kind = layer.spec["type"]
        if kind == "BatchNorm" and layer.source.get("weight") is not None and "in" in layer.sites:
            gamma = layer.source["weight"].abs().tolist()
            for a, v in zip(an.sites[layer.sites["in"]].tolist(), gamma):
                if a >= 0:
                    scores.setdefault(int(sol.classes[a]), []).append(v)
        if kind in PRODUCERS and layer.origin is not None:
            w = layer.source["weight"]
            rows = w.transpose(0, 1) if kind == "ConvTranspose2d" else w
            norms = rows.abs().reshape(rows.shape[0], -1).sum(1).tolist()
            for a, v in zip(layer.origin.tolist(), norms):
                l1.setdefault(int(sol.classes[a]), []).append(v)
    chosen = scores if order == "bn" else {}
    out = {c: float(np.mean(v)) for c, v in l1.items()}
    out.update({c: float(np.mean(v)) for c, v in chosen.items()})
    return out


def _summary(an: Analysis, sol: Solution) -> str:
    from dslim.models.convert.report import report

    fixed = report(an, sol)["fixed"]
    return "; ".join(f"{f['layer']}: {f['why'][0]}" for f in fixed[:3] if f["why"]) or "no layer makes channels"


assert A.FIXED == 0
