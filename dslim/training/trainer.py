"""The one training loop: Accelerate, mixed precision, schedules, EMA, accumulation, logging, checkpoint/resume.

It knows no method. A method (`dslim.training.method`) names its parameter sets and runs the passes of each
update; the trainer owns everything between: learning rates, freezing the sets an update does not train,
gradient reduction and clipping, optimizer steps, EMA, progress, `metrics.jsonl`, resumable checkpoints, and
stopping cleanly on a signal.

Choices made here, and why:
- The learning rate of each set is a pure function of the optimizer step (`lr_at`), written into its param groups
  before each step: nothing to prepare or save, identical on resume, and under DeepSpeed (whose engine steps
  inside the last backward) already set when the step happens.
- Gradient accumulation is counted here (a DALI loader is not a prepared DataLoader): each micro-batch's losses are
  divided by `grad_accum`, and the main set's gradients are all-reduced only by the last backward of the step.
- The main (first) parameter set belongs to DDP or the DeepSpeed engine. A DeepSpeed engine owns exactly one
  optimizer, so every other set (DMCP's architecture parameters, a BlockDrop policy: small) is kept out of both:
  DDP is told to ignore it, the engine never sees it in its optimizer, and the loop all-reduces its gradients
  itself (one flat all-reduce, a mean) before a plain torch optimizer steps it. Partitioning a few thousand
  parameters with ZeRO would save nothing, and this way DDP and DeepSpeed runs treat them identically.
- Torch's generator is seeded before each micro-batch's passes from (seed, step, update, the micro-batch's place in
  the global batch), so dropout and sampled masks follow the images, not the process: P processes draw what one
  process accumulating P micro-batches draws (the loader deals it the same images, `dslim.data.plan`), and no two
  processes draw the same noise.
- Checkpoints (`dslim.training.checkpointing`) are written whole or not at all. Resume rebuilds the epoch's loader
  (deterministic per seed and epoch) and skips the micro-batches already done.
- What it logs goes through `dslim.training.metrics` (`metrics.jsonl`, TensorBoard, the progress bars).
"""

from __future__ import annotations

import copy
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from torch import nn

from dslim.config import TrainConfig
from dslim.errors import UserError
from dslim.models.base import Supernet
from dslim.training.checkpointing import checkpoints, resume_checkpoint, save_checkpoint
from dslim.training.method import Batch, Method, StepContext, Update, Where, seed_draws
from dslim.training.metrics import MetricsLog, mean_over, progress_bars, summary_line
from dslim.training.optim import ParamSet, build_optimizer, lr_at, peak_lr
from dslim.training.runtime import Stopped, StopRequests, configure_wrappers


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


class Trainer:
    """Trains `supernet` with `method` for one stage of `cfg`, checkpointing into `state_dir`.

    `batch_size` is the micro-batch per process; the global batch is `batch_size * processes * grad_accum`.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        supernet: Supernet,
        method: Method,
        cfg: TrainConfig,
        *,
        stage: str,
        state_dir: str | os.PathLike,
        metrics: MetricsLog,
        batch_size: int,
        seed: int = 0,
    ) -> None:
        self.accelerator, self.supernet, self.method, self.cfg = accelerator, supernet, method, cfg
        self.stage, self.state_dir, self.metrics, self.seed = stage, Path(state_dir), metrics, seed
        self.batch_size = batch_size
        self.global_batch = batch_size * accelerator.num_processes * cfg.grad_accum
        self.step = 0
        self.sets: dict[str, ParamSet] = method.param_sets(supernet)
        self.main = next(iter(self.sets))
        members = {id(p) for s in self.sets.values() for p in s.params}
        for p in supernet.parameters():
            p.requires_grad_(id(p) in members)  # what no set trains is frozen for the whole stage
        self.peaks = {name: peak_lr(s.optim, self.global_batch) for name, s in self.sets.items()}
        self.ema: Supernet | None = None
        if cfg.ema_decay > 0:
            self.ema = copy.deepcopy(supernet).to(accelerator.device).eval().requires_grad_(False)
        optimizers = {
            name: build_optimizer(supernet, s.params, s.optim, self.peaks[name]) for name, s in self.sets.items()
        }
        outside = [p for name, s in self.sets.items() if name != self.main for p in s.params]
        configure_wrappers(accelerator, supernet, batch_size, self.sets[self.main].optim.grad_clip, outside)
        self.model, optimizers[self.main] = accelerator.prepare(supernet, optimizers[self.main])
        self.optimizers = optimizers

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        return checkpoints(self.state_dir)

    def _others(self) -> dict[str, torch.optim.Optimizer]:
        """The optimizers of the sets outside Accelerate (all but the main one)."""
        return {name: optimizer for name, optimizer in self.optimizers.items() if name != self.main}

    def save_checkpoint(self, epoch: int, batch: int) -> None:
        """Everything needed to continue at micro-batch `batch` of epoch `epoch`."""
        state = {
            "stage": self.stage,
            "step": self.step,
            "epoch": epoch,
            "batch": batch,
            "batch_size": self.batch_size,
            "processes": self.accelerator.num_processes,
            "grad_accum": self.cfg.grad_accum,
            "sets": list(self.sets),
        }
        save_checkpoint(self.accelerator, self.state_dir, self.step, state, self._others(), self.ema,
                        self.cfg.keep_last)  # fmt: skip

    def resume(self) -> tuple[int, int]:
        """Load the newest checkpoint, if any; returns (epoch, micro-batches of it already done)."""
        now = (self.batch_size, self.accelerator.num_processes, self.cfg.grad_accum)

        def same_settings(path: Path, state: dict) -> None:
            was = (state["batch_size"], state["processes"], state["grad_accum"])
            if was != now:
                raise UserError(
                    f"{path} was written with (batch size, processes, grad accum) = {was}, this run has {now}: "
                    "resume with the same settings, or use a new --out-dir"
                )

        found = resume_checkpoint(self.accelerator, self.state_dir, self._others(), self.ema, same_settings)
        if found is None:
            self.metrics.rewind(self.stage, 0)  # an attempt killed before its first checkpoint starts over
            return 0, 0
        latest, state = found
        self.step = state["step"]
        self.metrics.rewind(self.stage, self.step)
        self.accelerator.print(f"{self.stage}: resuming from {latest} (epoch {state['epoch']}, step {self.step})")
        return state["epoch"], state["batch"]

    # -- training ------------------------------------------------------------------------------------------------
    def fit(
        self,
        loader_for_epoch: Callable[[int], Iterable[Batch] | Sized],
        on_epoch_end: Callable[[int], dict[str, float]] | None = None,
    ) -> None:
        """Train `cfg.epochs` epochs. `loader_for_epoch(e)` gives this process's batches of epoch `e`, the same ones
        whenever asked; `on_epoch_end(e)` may return metrics (e.g. top-1 per subnet) for the epoch's summary.

        A SIGINT or SIGTERM stops the loop at the next step boundary, after a checkpoint: `Stopped` is raised.
        """
        acc, cfg = self.accelerator, self.cfg
        set_seed(self.seed)
        start_epoch, done = self.resume()
        per_epoch = len(loader_for_epoch(start_epoch)) // cfg.grad_accum  # type: ignore[arg-type]
        if per_epoch == 0:
            raise UserError(f"an epoch has fewer batches than --stages.{self.stage}.grad-accum {cfg.grad_accum}")
        show = acc.is_main_process and sys.stdout.isatty()
        with progress_bars(show) as progress, StopRequests(acc) as stops:
            epochs_bar = progress.add_task(f"{self.stage} epochs", total=cfg.epochs, completed=start_epoch, info="")
            steps_bar = progress.add_task("steps", total=per_epoch, info="")
            for epoch in range(start_epoch, cfg.epochs):
                batches = iter(loader_for_epoch(epoch))
                skip = done if epoch == start_epoch else 0
                for _ in range(skip):  # the loader is deterministic per (seed, epoch): replay to where we stopped
                    next(batches)
                progress.reset(steps_bar, total=per_epoch, completed=skip // cfg.grad_accum)
                sums: dict[str, list] = {}
                window: dict[str, list] = {}
                epoch_start = window_start = time.perf_counter()
                epoch_steps = window_steps = 0
                for i in range(skip // cfg.grad_accum, per_epoch):
                    where = Where(self.step, per_epoch, cfg.epochs)
                    lrs = self._set_learning_rates(where)
                    scalars = self._step(batches, where)
                    for k, v in scalars.items():
                        for store in (sums, window):
                            total, n = store.get(k, (0, 0))
                            store[k] = [total + v, n + 1]
                    epoch_steps += 1
                    window_steps += 1
                    if self.step % cfg.log_every == 0 or i == per_epoch - 1:
                        now = time.perf_counter()
                        values = mean_over(window, self.accelerator)
                        img_s = window_steps * self.global_batch / max(now - window_start, 1e-9)
                        self.metrics.write({"kind": "step", "stage": self.stage, "step": self.step,
                                            "epoch": round(self.step / per_epoch, 4), **lrs, **values,
                                            "img_s": round(img_s, 1), "time": time.time()})  # fmt: skip
                        info = f"loss {values.get('loss', float('nan')):.4f}  lr {lrs['lr']:.4g}  {img_s:,.0f} img/s"
                        progress.update(steps_bar, info=info)
                        window, window_start, window_steps = {}, now, 0
                    progress.update(steps_bar, completed=i + 1)
                    signum = stops.requested()
                    if signum:
                        self.save_checkpoint(epoch, (i + 1) * cfg.grad_accum)
                        raise Stopped(
                            f"{self.stage} stopped by signal {signum} at epoch {epoch + 1}, step {self.step}; "
                            "a checkpoint is saved: run the same command again to resume",
                            signum,
                        )
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and i < per_epoch - 1:
                        self.save_checkpoint(epoch, (i + 1) * cfg.grad_accum)
                seconds = time.perf_counter() - epoch_start
                summary = {"kind": "epoch", "stage": self.stage, "step": self.step, "epoch": epoch + 1,
                           **mean_over(sums, self.accelerator), "seconds": round(seconds, 2)}  # fmt: skip
                if on_epoch_end is not None:
                    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
                    with torch.random.fork_rng(devices=devices):  # evaluation must not move the training RNG
                        summary.update(on_epoch_end(epoch))
                self.metrics.write({**summary, "time": time.time()})
                acc.print(summary_line(self.stage, summary, cfg.epochs, epoch_steps * self.global_batch / seconds))
                self.save_checkpoint(epoch + 1, 0)
                progress.update(epochs_bar, completed=epoch + 1)
        acc.wait_for_everyone()

    def _set_learning_rates(self, where: Where) -> dict[str, float]:
        """Every set's learning rate at this step (a set whose phase has not begun is held at 0)."""
        lrs = {}
        for name, s in self.sets.items():
            start = round(s.start_epoch * where.steps_per_epoch)
            lr = 0.0
            if where.step >= start:
                lr = lr_at(where.step - start, where.steps_per_epoch, where.epochs - s.start_epoch,
                           self.peaks[name], s.schedule)  # fmt: skip
            for group in self.optimizers[name].param_groups:
                group["lr"] = lr
            lrs["lr" if name == self.main else f"lr/{name}"] = lr
        return lrs

    def _step(self, batches: Iterator[Batch], where: Where) -> dict[str, torch.Tensor]:
        acc, cfg = self.accelerator, self.cfg
        micro_batches = []
        for _ in range(cfg.grad_accum):
            images, labels = next(batches)
            micro_batches.append((images.to(acc.device, non_blocking=True), labels.to(acc.device, non_blocking=True)))
        totals: dict[str, torch.Tensor] = {}
        for u, update in enumerate(self.method.updates(where, list(self.sets))):
            trains_main = self.main in update.sets
            partial = set(update.sets) != set(self.sets)
            if partial:
                self._train_only(update.sets)
            model = self.model if trains_main else self.supernet
            for micro, batch in enumerate(micro_batches):
                # this micro-batch's place in the global batch, as the loader deals them (`dslim.data.plan`)
                seed_draws(self.seed, where.step, u, micro * acc.num_processes + acc.process_index)
                ctx = StepContext(acc, model, self.supernet, self.ema, cfg, self.seed, where, micro, trains_main)
                for k, v in update.passes(model, batch, ctx).items():
                    totals[k] = totals.get(k, 0) + v.detach().float() / cfg.grad_accum
            if trains_main and not acc.sync_gradients:
                raise RuntimeError("a method's last backward_pass of a micro-batch must say last=True")
            self._apply(update)
            if partial:
                self._train_only(self.sets)
        if self.ema is not None:
            update_ema(self.ema, self.supernet, cfg.ema_decay)
        self.step += 1
        return totals

    def _train_only(self, names: Iterable[str]) -> None:
        """Freeze every parameter set but `names`, so an update's backward reaches only its own sets."""
        names = set(names)
        for name, s in self.sets.items():
            for p in s.params:
                p.requires_grad_(name in names)

    def _apply(self, update: Update) -> None:
        """Reduce, clip and step the optimizers of `update`'s sets."""
        acc = self.accelerator
        for name in update.sets:
            s, optimizer = self.sets[name], self.optimizers[name]
            if name == self.main:
                if s.optim.grad_clip > 0 and acc.distributed_type != DistributedType.DEEPSPEED:
                    acc.clip_grad_norm_(self.model.parameters(), s.optim.grad_clip)
            else:
                self._reduce(s.params)
                if s.optim.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(s.params, s.optim.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    def _reduce(self, params: Iterable[nn.Parameter]) -> None:
        """Average a set's gradients over processes in one flat all-reduce (sets outside DDP and DeepSpeed)."""
        if self.accelerator.num_processes == 1:
            return
        params = list(params)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self.accelerator.reduce(torch.cat([g.flatten() for g in grads]), "mean")
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset : offset + g.numel()].view_as(p).clone()
            offset += g.numel()
