"""A stored graph as a program: one step per node, names resolved in the allow-lists of `dslim.models.convert.ops`.

Arguments are compiled once into getters of earlier results; modules are looked up by path at each call, so a copy
of the network (an EMA) runs its own layers and an export that swaps layers in place runs the new ones. Nothing is
executed that is not a listed torch function, tensor method or module of the network.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from dslim.errors import UserError
from dslim.models.convert.ops import FUNCTIONS, METHODS, Ref, decode


class Program:
    """A stored graph compiled for running: one step per node, arguments resolved from earlier results. Modules
    are looked up by path at each call (a copy of the network, an export swapping layers, runs its own)."""

    def __init__(self, steps: list, output: object) -> None:
        self.steps, self.output = steps, output

    def check(self, root: nn.Module) -> None:
        for call, _, _ in self.steps:
            if isinstance(call, tuple):
                _module(root, call)

    def run(self, root: nn.Module, x: torch.Tensor, observe=None) -> torch.Tensor:  # type: ignore[no-untyped-def]
        env: list = [x]
        for i, (call, args, kwargs) in enumerate(self.steps):
            if isinstance(call, tuple):
                call = _module(root, call)
            value = call(*[a(env) for a in args], **{k: v(env) for k, v in kwargs.items()})
            env.append(value)
            if observe is not None:
                observe(i + 1, value)
        return self.output(env)


def compile_graph(nodes: list[dict]) -> Program:
    """The steps of a stored node list; every name is resolved in the allow-lists (modules: by path)."""
    position: dict[str, int] = {}
    steps: list = []
    output = None
    for node in nodes:
        op, name = node["op"], node["name"]
        if op == "input":
            if position:
                raise UserError("a stored graph has more than one input")
            position[name] = 0
            continue
        if op == "output":
            output = _getter(decode(node["args"]), position)
            break
        args = [_getter(decode(a), position) for a in node.get("args", [])]
        kwargs = {k: _getter(decode(v), position) for k, v in node.get("kwargs", {}).items()}
        target = node["target"]
        if op == "module":
            call: object = tuple(target.split("."))
        elif op == "function" and target in FUNCTIONS:
            call = FUNCTIONS[target]
        elif op == "method" and target in METHODS:
            call = _method(target)
        else:
            raise UserError(f"unknown {op} {target!r} in a stored graph")
        position[name] = len(steps) + 1
        steps.append((call, args, kwargs))
    if output is None:
        raise UserError("a stored graph has no output")
    return Program(steps, output)


def _method(name: str):  # type: ignore[no-untyped-def]
    return lambda self, *a, **k: getattr(self, name)(*a, **k)


def _module(root: nn.Module, path: tuple[str, ...]) -> nn.Module:
    m = root
    for part in path:
        found = m._modules.get(part)
        if found is None:
            raise UserError(f"a stored graph calls {'.'.join(path)}, which it does not define")
        m = found
    return m


def _getter(value: object, position: Mapping[str, int]):  # type: ignore[no-untyped-def]
    if isinstance(value, Ref):
        if value.name not in position:
            raise UserError(f"a stored graph uses {value.name} before computing it")
        i = position[value.name]
        return lambda env: env[i]
    if isinstance(value, (list, tuple)):
        parts = [_getter(v, position) for v in value]
        kind = type(value)
        return lambda env: kind(p(env) for p in parts)
    if isinstance(value, slice):
        parts = [_getter(v, position) for v in (value.start, value.stop, value.step)]
        return lambda env: slice(*(p(env) for p in parts))
    return lambda env: value
