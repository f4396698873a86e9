"""Tracing a user's model into torch.fx graphs: one in eval mode and, where training runs other code (stochastic
depth written as `if self.training:`), one in train mode.

Standard `torch.nn` layers stay whole (leaves); the user's own modules are traced through, so whatever they compute
is made of torch operations that `dslim.models.convert.channels` has rules for. Sizes stay symbolic (`x.size(1)` is
a node, not a number), so a reshape computed from sizes follows the width at run time.
"""

from __future__ import annotations

import copy

import torch
import torch.fx as fx
from torch import nn

from dslim.errors import UserError


class _Tracer(fx.Tracer):
    def __init__(self) -> None:
        super().__init__()
        self.record_stack_traces = True

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m).__module__.startswith("torch.nn") and not isinstance(m, (nn.Sequential, nn.ModuleList,
                                                                                 nn.ModuleDict))  # fmt: skip


def trace(model: nn.Module, name: str) -> dict[str, tuple[fx.GraphModule, nn.Module]]:
    """`{"eval": (graph, model)}`, plus `"train": (graph, a copy of the model in train mode)` when training runs
    other operations. `name` says which model in error messages."""
    was_training = model.training
    try:
        model.eval()
        graphs = {"eval": (_trace(model, name), model)}
        twin = copy.deepcopy(model).train()
        train = _trace(twin, name)
        if _signature(train) != _signature(graphs["eval"][0]):
            graphs["train"] = (train, twin)
    finally:
        model.train(was_training)
    return graphs


def _trace(model: nn.Module, name: str) -> fx.GraphModule:
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as e:  # fx raises many types for code it cannot follow symbolically
        detail = " ".join(str(e).split())[:200]
        raise UserError(
            f"{name} cannot be traced by torch.fx ({type(e).__name__}: {detail}); control flow on tensor "
            f"values or sizes must be rewritten as torch operations (see docs/your-model.md)"
        ) from None
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _signature(gm: fx.GraphModule) -> list[tuple]:
    return [(n.op, str(n.target), str(n.args), str(n.kwargs)) for n in gm.graph.nodes]


def run_example(model: nn.Module, example: torch.Tensor, name: str) -> torch.Tensor:
    """The model's own output on the example (eval mode, no grad); a `UserError` if it does not run."""
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(example)
    except Exception as e:
        detail = " ".join(str(e).split())[:200]
        raise UserError(f"{name} does not run on an input of shape {tuple(example.shape)} ({type(e).__name__}: "
                        f"{detail}); set --model.input-size to what it takes") from None  # fmt: skip
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise UserError(f"{name} returns a {type(out).__name__}; dslim trains models that return one tensor of logits")
    return out
