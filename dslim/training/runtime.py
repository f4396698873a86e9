"""The process around training: the Accelerator (checked against the launch, `dslim.training.launch`), what DDP and
DeepSpeed are told before `prepare`, and stopping cleanly on Ctrl-C or a scheduler's SIGTERM."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs, PartialState
from accelerate.utils import DistributedType
from torch import nn

from dslim.errors import Stopped, UserError
from dslim.training.launch import check_launch, check_world

__all__ = ["StopRequests", "Stopped", "configure_wrappers", "make_accelerator", "tune_allocator"]

MMAP_THRESHOLD = 32 * 2**20
"""Allocations above this go straight to mmap (glibc's dynamic default starts at 128 KiB and grows)."""
TRIM_THRESHOLD = 2**31 - 1
"""Free memory at the top of the heap kept rather than returned to the kernel (the most `mallopt` accepts)."""


def tune_allocator() -> bool:
    """Make glibc's malloc keep freed memory in the process, as `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_`
    would, so that a training step's large, short-lived activations are not returned to the kernel and faulted in
    again on the next step (up to 25% of a sandwich step on CPU: docs/benchmarks.md). Idempotent; a no-op off
    glibc or with `DSLIM_MALLOC=system`. Returns whether it applied."""
    if os.environ.get("DSLIM_MALLOC", "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc: leave it alone
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, MMAP_THRESHOLD)) and bool(mallopt(m_trim_threshold, TRIM_THRESHOLD))


def make_accelerator(
    mixed_precision: str = "no", project_dir: str | os.PathLike | None = None, trackers: Sequence = ()
) -> Accelerator:
    """The run's one Accelerator (Accelerate keeps its state per process, so stages share it), logging to
    `trackers` (`dslim.training.trackers.make_trackers`).

    Refuses the launches that would silently train alone, on the wrong device or at another precision
    (`dslim.training.launch`). Also tunes the allocator (`tune_allocator`): every command that trains or evaluates
    comes through here.
    """
    tune_allocator()
    check_launch(os.environ, torch.cuda.device_count(), mixed_precision)
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true") and not torch.cuda.is_available():
        PartialState(backend="gloo")  # without it every DeepSpeed rank on CPU believes it is rank 0
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise UserError("--mixed-precision fp16 needs a GPU (on CPU Accelerate would silently run fp32); use bf16")
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        log_with=list(trackers) or None,
        project_dir=None if project_dir is None else str(project_dir),
    )
    check_world(accelerator, os.environ)
    return accelerator


def configure_wrappers(
    accelerator: Accelerator, net: nn.Module, batch_size: int, grad_clip: float, outside: Sequence[nn.Parameter]
) -> None:
    """Tell DDP or DeepSpeed, before `prepare`, what the training loop does itself: accumulation, clipping of
    `grad_clip`, and the reduction of the `outside` parameters (the sets other than the main one)."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        # Explicit, whatever a config file said: DeepSpeed clips to 1.0 when unset, and we accumulate ourselves.
        ds["gradient_clipping"] = grad_clip
        ds["train_micro_batch_size_per_gpu"] = batch_size
        ds["gradient_accumulation_steps"] = 1
        ds["train_batch_size"] = batch_size * accelerator.num_processes
        ds.setdefault("zero_allow_untested_optimizer", True)
        if ds.get("bf16", {}).get("enabled"):
            # DeepSpeed's bf16 casts the parameters, not the inputs or BatchNorm's fp32 statistics (a dtype error at
            # the first conv); its torch_autocast keeps fp32 weights and runs convs and matmuls in bf16.
            ds["bf16"] = {"enabled": False}
            ds["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    elif accelerator.num_processes > 1:
        # Some parameters get no gradient in some passes (switchable BN affines of other widths, dropped blocks):
        # cheap to search for in a CNN, and a hang or an error otherwise.
        accelerator.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
        ids = {id(p) for p in outside}
        net._ddp_params_and_buffers_to_ignore = [n for n, p in net.named_parameters() if id(p) in ids]  # read by DDP


class StopRequests:
    """Turns SIGINT / SIGTERM into a request the training loop honours between two steps.

    The first signal is only recorded (the loop then saves a checkpoint and raises `Stopped`); a second one gets
    the default behaviour back, so a user can always kill a run that does not stop. All processes agree on
    whether to stop (`requested` is all-reduced), so none waits forever in a collective the others left.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator
        self.signum = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        try:
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread: signals cannot be caught here, leave them alone
            self._previous.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        for s, handler in self._previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]

    def requested(self) -> int:
        """The signal number to stop on (0: carry on), the same on every process."""
        if self.accelerator.num_processes == 1:
            return self.signum
        flag = torch.tensor([self.signum], device=self.accelerator.device)
        return int(self.accelerator.reduce(flag, "max").item())
