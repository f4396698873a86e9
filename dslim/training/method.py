"""What a method tells the training loop: its parameter sets, and the updates one step makes.

A method (`dslim.methods`) is small: `param_sets(net)` names the parameters it trains, each set with its own
optimizer and schedule settings (the first set is the main one: DDP or DeepSpeed own it); `step(model, batch,
ctx)` runs the forward and backward passes of one micro-batch. A method whose step alternates between sets (DMCP:
weights, then architecture parameters) or changes with the phase of the stage overrides `updates(where)`.
The method also owns train/eval modes: the loop never changes them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from dslim.config import TrainConfig
from dslim.models.base import Supernet
from dslim.training.optim import ParamSet

Batch = tuple[torch.Tensor, torch.Tensor]

SUBNET_STREAM = 0x5EED
"""Third seed word of the per-step generator, so its draws never coincide with the loader's `(seed, epoch)`."""


TORCH_STREAM = 0x70C4
"""Third seed word of the per-micro-batch seed of torch's generator (`seed_draws`)."""


def seed_draws(seed: int, step: int, update: int, micro: int) -> None:
    """Seed torch's global generator for micro-batch `micro` of the global batch of `update` of `step`.

    Dropout, sampled masks and any other torch draw of a pass then depend on which images it sees, not on how the
    global batch is spread over processes: P processes draw what one process accumulating P micro-batches draws,
    processes draw independently of each other, and a resumed step draws what it drew the first time.
    """
    words = [seed, step, TORCH_STREAM, update, micro]
    torch.manual_seed(int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> 1))


@dataclass(frozen=True)
class Where:
    """Where in its stage a step is: methods switch phases on this."""

    step: int
    """Optimizer step, counted from the start of the stage."""
    steps_per_epoch: int
    epochs: int

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    @property
    def fraction(self) -> float:
        """Share of the stage done before this step, in [0, 1)."""
        return self.step / (self.steps_per_epoch * self.epochs)


@dataclass
class StepContext:
    """One micro-batch of one update of one optimizer step, as a method sees it."""

    accelerator: Accelerator
    model: nn.Module
    """What to call for every forward pass that trains: the prepared model (DDP / DeepSpeed engine) when the update
    trains the main parameter set, else the plain supernet (other sets are reduced by the loop itself)."""
    supernet: Supernet
    """The same network unwrapped: set subnets on it."""
    ema: Supernet | None
    """The exponential moving average of the supernet (eval mode, no gradients), or None."""
    cfg: TrainConfig
    seed: int
    where: Where
    micro: int
    """Micro-batch within the step (0 .. grad_accum - 1)."""
    trains_main: bool

    @property
    def step(self) -> int:
        return self.where.step

    def rng(self, stream: int = 0) -> np.random.Generator:
        """Draws shared by every process and every micro-batch of this step (never the global RNG)."""
        return np.random.default_rng((self.seed, self.where.step, SUBNET_STREAM, stream))

    @contextlib.contextmanager
    def backward_pass(self, last: bool) -> Iterator[None]:
        """Wrap one forward + backward. Only the last pass of the last micro-batch all-reduces the main set's
        gradients; the others accumulate locally, so no graph outlives its backward (the pattern valid for DDP and
        DeepSpeed ZeRO)."""
        if not self.trains_main:
            yield
            return
        sync = last and self.micro == self.cfg.grad_accum - 1
        self.accelerator.sync_gradients = sync
        with contextlib.nullcontext() if sync else self.accelerator.no_sync(self.model):
            yield

    def backward(self, loss: torch.Tensor) -> None:
        loss = loss / self.cfg.grad_accum
        if self.trains_main:
            self.accelerator.backward(loss)
        else:
            loss.backward()


StepFn = Callable[[nn.Module, Batch, StepContext], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Update:
    """Passes over every micro-batch of a step that end in one step of the optimizers of `sets`.

    Parameters of the other sets are frozen during it, so each optimizer sees only its own update's gradients.
    """

    sets: tuple[str, ...]
    passes: StepFn


class Method:
    """What a training stage's step computes (see the module docstring)."""

    def param_sets(self, net: Supernet) -> dict[str, ParamSet]:
        raise NotImplementedError

    def updates(self, where: Where, sets: Sequence[str]) -> list[Update]:
        """This step's updates, in order; by default one update of every set by `step`."""
        return [Update(tuple(sets), self.step)]

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        raise NotImplementedError
