"""The one training loop: Accelerate, mixed precision, schedules, EMA, accumulation, logging, checkpoint/resume.

It knows no method. A method (`dslim.methods`) is a function `method(model, batch, ctx) -> scalars` that runs the
forward/backward passes of one micro-batch through `ctx`; the trainer owns everything between: learning rate,
gradient clipping, optimizer step, EMA, progress, `metrics.jsonl` and resumable checkpoints.

Choices made here, and why:
- The learning rate is a pure function of the optimizer step (`lr_at`), written into the param groups before each
  step. Nothing to prepare, nothing to save, identical on resume, and under DeepSpeed (whose engine steps inside
  the last backward) it is already set when the step happens.
- Gradient accumulation is counted here (a DALI loader is not a prepared DataLoader): each micro-batch's losses are
  divided by `grad_accum`, and gradients are all-reduced only by the last backward of the last micro-batch.
- A checkpoint is `accelerator.save_state` (model, optimizer, scaler, RNG of every process) plus `trainer.json`
  (where in which epoch) and `ema.safetensors`, written into a hidden folder renamed into place once complete:
  a crash never leaves a checkpoint that looks finished. Resume rebuilds the epoch's loader (deterministic per
  seed and epoch) and skips the micro-batches already done.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs, PartialState
from accelerate.utils import DistributedType, set_seed
from torch import nn

from dslim.checkpoint import atomic_write, load_tensors, save_tensors
from dslim.config import OptimConfig, ScheduleConfig, TrainConfig
from dslim.errors import UserError
from dslim.models.base import Supernet

Batch = tuple[torch.Tensor, torch.Tensor]

SUBNET_STREAM = 0x5EED
"""Third seed word of the per-step generator, so its draws never coincide with the loader's `(seed, epoch)`."""


# -- accelerator, optimizer, schedule ---------------------------------------------------------------------------
def make_accelerator(
    mixed_precision: str = "no", project_dir: str | os.PathLike | None = None, tensorboard: bool = False
) -> Accelerator:
    """The run's one Accelerator (Accelerate keeps its state per process, so stages share it).

    Refuses the silent failures of multi-process launches: processes that each train alone, DeepSpeed dropped.
    """
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true")
    if deepspeed and os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true"):
        raise UserError("ACCELERATE_USE_CPU=true turns DeepSpeed off silently: unset it to run DeepSpeed on a CPU")
    if deepspeed and not torch.cuda.is_available():
        PartialState(backend="gloo")  # without it every DeepSpeed rank on CPU believes it is rank 0
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise UserError("--mixed-precision fp16 needs a GPU (on CPU Accelerate would silently run fp32); use bf16")
    log_with = None
    if tensorboard:
        try:
            import tensorboard as _  # noqa: F401
        except ImportError:
            raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        log_with = "tensorboard"
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        log_with=log_with,
        project_dir=None if project_dir is None else str(project_dir),
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != launched:
        raise UserError(
            f"launched as {launched} processes but Accelerate sees {accelerator.num_processes}: each would train "
            "alone; on CPU set ACCELERATE_USE_CPU=true (DDP) or ACCELERATE_USE_DEEPSPEED=true (DeepSpeed)"
        )
    return accelerator


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def param_groups(model: nn.Module, optim: OptimConfig) -> list[dict]:
    """Two groups, decayed and not: 1-D parameters (BN affine, biases) and, optionally, depthwise conv weights
    are not decayed, as in the originals."""
    decay, no_decay = [], []
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if not p.requires_grad:
                continue
            exempt = (p.ndim <= 1 and not optim.decay_norm_and_bias) or (
                is_depthwise(module) and p is module.weight and not optim.decay_depthwise
            )
            (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, optim: OptimConfig, lr: float) -> torch.optim.Optimizer:
    groups = [g for g in param_groups(model, optim) if g["params"]]
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=optim.momentum, nesterov=optim.nesterov and optim.momentum > 0)
    return torch.optim.AdamW(groups, lr=lr, betas=optim.betas)


def peak_lr(optim: OptimConfig, global_batch: int) -> float:
    """`optim.lr` is quoted for `optim.lr_batch` images per step; scale it linearly to the actual global batch."""
    return optim.lr * global_batch / optim.lr_batch


def lr_at(step: int, steps_per_epoch: int, epochs: int, peak: float, s: ScheduleConfig) -> float:
    """Learning rate of optimizer step `step` (0-based) of a stage of `epochs` epochs.

    Warm-up rises linearly from `warmup_lr` to `peak`; the decay then runs from the end of warm-up to the start of
    the cool-down (the last `cooldown_epochs`), which stays at `min_lr`. `step` and `exp` decay per whole epoch.
    """
    e = step / steps_per_epoch
    if e < s.warmup_epochs:
        return s.warmup_lr + (peak - s.warmup_lr) * e / s.warmup_epochs
    decay_end = epochs - s.cooldown_epochs
    if s.cooldown_epochs and e >= decay_end:
        return s.min_lr
    t = min(1.0, (e - s.warmup_epochs) / max(decay_end - s.warmup_epochs, 1e-12))
    if s.kind == "cosine":
        return s.min_lr + (peak - s.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
    if s.kind == "linear":
        return s.min_lr + (peak - s.min_lr) * (1 - t)
    if s.kind == "step":
        return peak * s.gamma ** sum(math.floor(e) >= m for m in s.milestones)
    if s.kind == "exp":
        return peak * s.gamma ** math.floor(e)
    return peak


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """`ema = decay * ema + (1 - decay) * model` for every floating tensor, parameters and BN statistics alike."""
    current = model.state_dict()
    for name, e in ema.state_dict().items():
        m = current.get(name)
        if m is None:  # statistics of a subnet first met after the EMA was made: not needed by a teacher
            continue
        if e.dtype.is_floating_point:
            e.lerp_(m.to(e.dtype), 1.0 - decay)
        else:
            e.copy_(m)


# -- what a method sees ------------------------------------------------------------------------------------------
@dataclass
class StepContext:
    """One micro-batch of one optimizer step, as a method sees it."""

    accelerator: Accelerator
    model: nn.Module
    """The prepared model (DDP / DeepSpeed engine): call it for every forward pass that trains."""
    supernet: Supernet
    """The same network unwrapped: set subnets on it."""
    ema: Supernet | None
    """The exponential moving average of the supernet (eval mode, no gradients), or None."""
    cfg: TrainConfig
    seed: int
    step: int
    """Optimizer step, counted from the start of the stage."""
    micro: int
    """Micro-batch within the step (0 .. grad_accum - 1)."""

    def rng(self) -> np.random.Generator:
        """Draws shared by every process and every micro-batch of this step (never the global RNG)."""
        return np.random.default_rng((self.seed, self.step, SUBNET_STREAM))

    @contextlib.contextmanager
    def backward_pass(self, last: bool) -> Iterator[None]:
        """Wrap one forward + backward. Only the last pass of the last micro-batch all-reduces gradients; the others
        accumulate locally, so no graph outlives its backward (the pattern valid for DDP and DeepSpeed ZeRO)."""
        sync = last and self.micro == self.cfg.grad_accum - 1
        self.accelerator.sync_gradients = sync
        with contextlib.nullcontext() if sync else self.accelerator.no_sync(self.model):
            yield

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss / self.cfg.grad_accum)


class Method(Protocol):
    def __call__(self, model: nn.Module, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]: ...


# -- logging -----------------------------------------------------------------------------------------------------
class MetricsLog:
    """`metrics.jsonl` (one JSON object per line, main process only) and, optionally, TensorBoard."""

    def __init__(self, path: str | os.PathLike, accelerator: Accelerator) -> None:
        self.path, self.accelerator = Path(path), accelerator

    def write(self, record: dict) -> None:
        if not self.accelerator.is_main_process:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.accelerator.log_with:
            numbers = {f"{record['stage']}/{k}": v for k, v in record.items() if isinstance(v, (int, float))}
            self.accelerator.log(numbers, step=record.get("step"))


def _progress(enabled: bool):  # type: ignore[no-untyped-def]
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        disable=not enabled,
        transient=False,
    )


# -- the loop ----------------------------------------------------------------------------------------------------
class Trainer:
    """Trains `supernet` for one stage with `cfg`, checkpointing into `state_dir`.

    `batch_size` is the micro-batch per process; the global batch is `batch_size * processes * grad_accum`.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        supernet: Supernet,
        cfg: TrainConfig,
        *,
        stage: str,
        state_dir: str | os.PathLike,
        metrics: MetricsLog,
        batch_size: int,
        seed: int = 0,
    ) -> None:
        self.accelerator, self.supernet, self.cfg, self.stage = accelerator, supernet, cfg, stage
        self.state_dir, self.metrics, self.seed = Path(state_dir), metrics, seed
        self.batch_size = batch_size
        self.global_batch = batch_size * accelerator.num_processes * cfg.grad_accum
        self.peak = peak_lr(cfg.optim, self.global_batch)
        self.step = 0
        self.ema: Supernet | None = None
        if cfg.ema_decay > 0:
            self.ema = copy.deepcopy(supernet).to(accelerator.device).eval().requires_grad_(False)
        optimizer = build_optimizer(supernet, cfg.optim, self.peak)
        self._configure_distributed()
        self.model, self.optimizer = accelerator.prepare(supernet, optimizer)

    def _configure_distributed(self) -> None:
        acc = self.accelerator
        if acc.distributed_type == DistributedType.DEEPSPEED:
            ds = acc.state.deepspeed_plugin.deepspeed_config
            # Explicit, whatever a config file said: DeepSpeed clips to 1.0 when unset, and we accumulate ourselves.
            ds["gradient_clipping"] = self.cfg.optim.grad_clip
            ds["train_micro_batch_size_per_gpu"] = self.batch_size
            ds["gradient_accumulation_steps"] = 1
            ds["train_batch_size"] = self.batch_size * acc.num_processes
            ds.setdefault("zero_allow_untested_optimizer", True)
        elif acc.num_processes > 1:
            # Some parameters get no gradient in some passes (switchable BN affines of other widths, a DS-Net gate
            # in stage I, dropped blocks): cheap to search for in a CNN, and a hang or an error otherwise.
            acc.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.state_dir.is_dir():
            return []
        return sorted(p for p in self.state_dir.glob("ckpt-*") if p.is_dir())

    def save_checkpoint(self, epoch: int, batch: int) -> None:
        """Everything needed to continue at micro-batch `batch` of epoch `epoch`."""
        acc = self.accelerator
        final = self.state_dir / f"ckpt-{self.step:09d}"
        if final.exists():
            return
        tmp = self.state_dir / f".tmp-ckpt-{self.step:09d}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()  # every process's files are in before the folder is renamed
        if acc.is_main_process:
            state = {
                "stage": self.stage,
                "step": self.step,
                "epoch": epoch,
                "batch": batch,
                "batch_size": self.batch_size,
                "processes": acc.num_processes,
                "grad_accum": self.cfg.grad_accum,
            }
            (tmp / "trainer.json").write_text(json.dumps(state))
            if self.ema is not None:
                save_tensors(self.ema.state_dict(), tmp / "ema.safetensors", {"stage": self.stage, "step": self.step})
            os.replace(tmp, final)
            for old in self.checkpoints()[: -max(self.cfg.keep_last, 1)]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def resume(self) -> tuple[int, int]:
        """Load the newest checkpoint, if any; returns (epoch, micro-batches of it already done)."""
        found = self.checkpoints()
        if self.accelerator.is_main_process:
            for stale in self.state_dir.glob(".tmp-ckpt-*"):
                shutil.rmtree(stale, ignore_errors=True)
        if not found:
            return 0, 0
        latest = found[-1]
        state = json.loads((latest / "trainer.json").read_text())
        was = (state["batch_size"], state["processes"], state["grad_accum"])
        now = (self.batch_size, self.accelerator.num_processes, self.cfg.grad_accum)
        if was != now:
            raise UserError(
                f"{latest} was written with (batch size, processes, grad accum) = {was}, this run has {now}: "
                "resume with the same settings, or use a new --out-dir"
            )
        self.accelerator.load_state(str(latest))
        if self.ema is not None:
            tensors, _ = load_tensors(latest / "ema.safetensors")
            self.ema.load_state_dict(tensors)
        self.step = state["step"]
        self.accelerator.print(f"{self.stage}: resuming from {latest} (epoch {state['epoch']}, step {self.step})")
        return state["epoch"], state["batch"]

    # -- training ------------------------------------------------------------------------------------------------
    def fit(
        self,
        method: Method,
        loader_for_epoch: Callable[[int], Iterable[Batch] | Sized],
        on_epoch_end: Callable[[int], dict[str, float]] | None = None,
    ) -> None:
        """Train `cfg.epochs` epochs. `loader_for_epoch(e)` gives this process's batches of epoch `e`, the same ones
        whenever asked; `on_epoch_end(e)` may return metrics (e.g. top-1 per subnet) for the epoch's summary."""
        acc, cfg = self.accelerator, self.cfg
        set_seed(self.seed)
        start_epoch, done = self.resume()
        per_epoch = len(loader_for_epoch(start_epoch)) // cfg.grad_accum  # type: ignore[arg-type]
        if per_epoch == 0:
            raise UserError(f"an epoch has fewer batches than --stages.{self.stage}.grad-accum {cfg.grad_accum}")
        show = acc.is_main_process and sys.stdout.isatty()
        with _progress(show) as progress:
            epochs_bar = progress.add_task(f"{self.stage} epochs", total=cfg.epochs, completed=start_epoch, info="")
            steps_bar = progress.add_task("steps", total=per_epoch, info="")
            for epoch in range(start_epoch, cfg.epochs):
                loader = loader_for_epoch(epoch)
                batches = iter(loader)
                skip = done if epoch == start_epoch else 0
                for _ in range(skip):  # the loader is deterministic per (seed, epoch): replay to where we stopped
                    next(batches)
                progress.reset(steps_bar, total=per_epoch, completed=skip // cfg.grad_accum)
                sums: dict[str, torch.Tensor] = {}
                window: dict[str, torch.Tensor] = {}
                epoch_start = window_start = time.perf_counter()
                epoch_steps = window_steps = 0
                for i in range(skip // cfg.grad_accum, per_epoch):
                    lr = lr_at(self.step, per_epoch, cfg.epochs, self.peak, cfg.schedule)
                    scalars = self._step(method, batches, lr)
                    for k, v in scalars.items():
                        sums[k] = sums.get(k, 0) + v
                        window[k] = window.get(k, 0) + v
                    epoch_steps += 1
                    window_steps += 1
                    if self.step % cfg.log_every == 0 or i == per_epoch - 1:
                        now = time.perf_counter()
                        values = self._mean(window, window_steps)
                        img_s = window_steps * self.global_batch / max(now - window_start, 1e-9)
                        self.metrics.write(
                            {
                                "kind": "step",
                                "stage": self.stage,
                                "step": self.step,
                                "epoch": round(self.step / per_epoch, 4),
                                "lr": lr,
                                **values,
                                "img_s": round(img_s, 1),
                                "time": time.time(),
                            }
                        )
                        info = f"loss {values.get('loss', float('nan')):.4f}  lr {lr:.4g}  {img_s:,.0f} img/s"
                        progress.update(steps_bar, info=info)
                        window, window_start, window_steps = {}, now, 0
                    progress.update(steps_bar, completed=i + 1)
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and i < per_epoch - 1:
                        self.save_checkpoint(epoch, (i + 1) * cfg.grad_accum)
                seconds = time.perf_counter() - epoch_start
                summary = {
                    "kind": "epoch",
                    "stage": self.stage,
                    "step": self.step,
                    "epoch": epoch + 1,
                    **self._mean(sums, epoch_steps),
                    "seconds": round(seconds, 2),
                }
                if on_epoch_end is not None:
                    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
                    with torch.random.fork_rng(devices=devices):  # evaluation must not move the training RNG
                        summary.update(on_epoch_end(epoch))
                self.metrics.write({**summary, "time": time.time()})
                acc.print(self._summary_line(summary, cfg.epochs, epoch_steps * self.global_batch / seconds))
                self.save_checkpoint(epoch + 1, 0)
                progress.update(epochs_bar, completed=epoch + 1)
        acc.wait_for_everyone()

    def _step(self, method: Method, batches: Iterator[Batch], lr: float) -> dict[str, torch.Tensor]:
        acc, cfg = self.accelerator, self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        totals: dict[str, torch.Tensor] = {}
        for micro in range(cfg.grad_accum):
            images, labels = next(batches)
            images = images.to(acc.device, non_blocking=True)
            labels = labels.to(acc.device, non_blocking=True)
            ctx = StepContext(acc, self.model, self.supernet, self.ema, cfg, self.seed, self.step, micro)
            for k, v in method(self.model, (images, labels), ctx).items():
                totals[k] = totals.get(k, 0) + v.detach().float() / cfg.grad_accum
        if not acc.sync_gradients:
            raise RuntimeError("a method's last backward_pass of a micro-batch must say last=True")
        if cfg.optim.grad_clip > 0 and acc.distributed_type != DistributedType.DEEPSPEED:
            acc.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            update_ema(self.ema, self.supernet, cfg.ema_decay)
        self.step += 1
        return totals

    def _mean(self, sums: dict[str, torch.Tensor], steps: int) -> dict[str, float]:
        """Means over steps and processes (a collective: every process calls it at the same steps)."""
        if not sums:
            return {}
        names = sorted(sums)
        stacked = torch.stack([torch.as_tensor(sums[k], device=self.accelerator.device).float() for k in names])
        reduced = self.accelerator.reduce(stacked, "mean") / max(steps, 1)
        return {k: round(float(v), 6) for k, v in zip(names, reduced.tolist())}

    def _summary_line(self, s: dict, epochs: int, img_s: float) -> str:
        extra = "  ".join(f"{k} {v:.2f}" for k, v in s.items() if k.startswith("top1"))
        loss = s.get("loss", float("nan"))
        return (
            f"{self.stage} epoch {s['epoch']}/{epochs}: loss {loss:.4f}  {img_s:,.0f} img/s  {s['seconds']:.1f} s"
            + (f"  | {extra}" if extra else "")
        )


def write_json(path: str | os.PathLike, obj: object) -> None:
    """JSON written atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))
