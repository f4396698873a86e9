"""What a stage sees while it runs: its settings, its inputs, and how to write its outputs."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator

from dslim.config import Config, TrainConfig, config_json, option_name
from dslim.errors import UserError
from dslim.evaluation.accuracy import evaluate
from dslim.evaluation.calibration import recalibrate, scratch_statistics
from dslim.io import preprocessing, write_json
from dslim.io.artifacts import save_supernet
from dslim.models import from_config
from dslim.models.base import Supernet
from dslim.models.complexity import measure
from dslim.stages.layout import RunLayout
from dslim.stages.registry import Stage
from dslim.stages.run import resolve
from dslim.subnet import Subnet
from dslim.training import Method, MetricsLog, Trainer
from dslim.training.optim import split_batch
from dslim.training.replicas import agree, parameter_digest, text_digest


def batching(cfg: object, most: int, stage: str, processes: int) -> tuple[int, int]:
    """`(micro-batch per process, micro-batches per optimizer step)` of a stage's training loop (settings `cfg`): its
    `global_batch` split over `processes` in micro-batches of at most `most` (`data.batch_size`), or `most` and
    `grad_accum`."""
    if not isinstance(cfg, TrainConfig):
        return most, 1
    if not cfg.global_batch:
        return most, cfg.grad_accum
    return split_batch(cfg.global_batch, processes, most, option_name(f"stages.{stage}.global_batch"))


@dataclass
class StageContext:
    """One stage of one invocation of a pipeline."""

    stage: Stage
    """The stage running (its name, and whether it may start from scratch)."""
    settings: object
    """This stage's settings (`config.stages.<name>`)."""
    config: Config
    recipe: str
    layout: RunLayout
    accelerator: Accelerator
    metrics: MetricsLog
    calibrate_batches: int
    """Training batches that calibrate a subnet without BatchNorm statistics before it is evaluated or exported:
    one count for the whole run (`dslim.stages.evaluate.calibration_batches`)."""
    input: Supernet | None = None
    """The supernet this stage starts from (the nearest earlier stage's artifact, or `--from`), if any."""
    input_meta: dict = field(default_factory=dict)
    """The metadata of that artifact (what the stage that wrote it recorded beside the weights: DMCP's alphas)."""
    subnet_files: dict[str, dict] = field(default_factory=dict)
    """Named subnets of the finished stages' `subnets` artifacts."""

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def batching(self) -> tuple[int, int]:
        """`(micro-batch per process, micro-batches per step)` of this stage's training (`batching`)."""
        return batching(self.settings, self.config.data.batch_size, self.name, self.accelerator.num_processes)

    @property
    def dir(self) -> Path:
        return self.layout.dir(self.name)

    # -- inputs ---------------------------------------------------------------------------------------------------
    def supernet(self) -> Supernet:
        """The supernet to start from; a new one (from the model settings) only for a stage that may start from
        scratch. On the accelerator's device."""
        if self.input is not None:
            return self.input.to(self.accelerator.device)
        if not self.stage.from_scratch:
            raise UserError(
                f"stage {self.name} needs a trained supernet: run the earlier stages first, or give --from PATH"
            )
        return from_config(self.config.model).to(self.accelerator.device)

    def resolve(self, net: Supernet, names: Sequence[str]) -> dict[str, Subnet]:
        """Subnets by name: `net`'s own names, then the run's named-subnets files."""
        return {name: resolve(net, self.subnet_files, name) for name in names}

    def loader(self, split: str, epoch: int = 0, batch_size: int = 0):  # type: ignore[no-untyped-def]
        """This process's shard of `split`, deterministic per (seed, epoch); training batches are the stage's
        micro-batches unless `batch_size` says otherwise."""
        from dslim.data import build_loader

        acc = self.accelerator
        data = self.config.data
        if split == "train":
            data = dataclasses.replace(data, batch_size=batch_size or self.batching[0])
        return build_loader(data, split, self.config.model.input_size,  # type: ignore[arg-type]
                            shard_id=acc.process_index, num_shards=acc.num_processes, seed=self.config.seed,
                            epoch=epoch)  # fmt: skip

    def training_batches(self, batch_size: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Training batches (train augmentation) for as many epochs as asked for."""
        for epoch in itertools.count():
            yield from self.loader("train", epoch, batch_size)

    def trainer(self, net: Supernet, method: Method, settings: TrainConfig) -> Trainer:
        """The training loop of this stage: micro-batches and accumulation from its `global_batch`."""
        micro, accum = self.batching
        settings = dataclasses.replace(settings, grad_accum=accum)
        return Trainer(self.accelerator, net, method, settings, stage=self.name, state_dir=self.layout.state(self.name),
                       metrics=self.metrics, batch_size=micro, seed=self.config.seed)  # fmt: skip

    def epoch_evaluator(self, trainer: Trainer, subnets: Mapping[str, Subnet]) -> Callable[[int], dict[str, float]]:
        """Top-1 of `subnets` (of the EMA too) after each epoch, on the validation split. Calibrated BatchNorm gets
        statistics from `calibrate_batches` training batches first, in a throwaway scope (the training model is left
        as it was)."""
        config = self.config

        def evaluate_epoch(epoch: int) -> dict[str, float]:
            out = {}
            for prefix, model in (("", trainer.supernet), ("ema/", trainer.ema)):
                if model is None:
                    continue
                with scratch_statistics(model):
                    if model.bn_mode == "calibrated":
                        batches = self.loader("train", epoch)
                        recalibrate(model, subnets, batches, self.calibrate_batches, self.accelerator)
                    rows = evaluate(model, subnets, self.loader("val"), config.model.input_size, self.accelerator)
                out.update({f"top1/{prefix}{r['subnet']}": round(r["top1"], 3) for r in rows})
            return out

        return evaluate_epoch

    # -- outputs --------------------------------------------------------------------------------------------------
    def save_trained(self, trainer: Trainer, net: Supernet | None = None, **extra: object) -> None:
        """Write a training stage's artifact: `net` (default: the trainer's), and its EMA beside it; with
        `ema_artifact`, the EMA as the artifact and the trained weights beside it (as the original DS-Net kept both,
        and reported its EMA)."""
        net = trainer.supernet if net is None else net
        ema = trainer.ema
        if ema is None:
            self.save_supernet(net, **extra)
            return
        ema.router_trained = net.router_trained
        ema.name_subnets(net.extra_names)
        handing_ema, decay = trainer.cfg.ema_artifact, trainer.cfg.ema_decay
        handed, beside, kind = (ema, net, "weights") if handing_ema else (net, ema, "ema")
        # the one beside first: the stage's artifact marks it done
        self.save_supernet(beside, kind, ema=not handing_ema, ema_decay=decay, **extra)
        self.save_supernet(handed, ema=handing_ema, ema_decay=decay, **extra)

    def save_supernet(self, net: Supernet, kind: str = "supernet", **extra: object) -> None:
        """Write this stage's `supernet` artifact (or another `kind` of the layout; the main process writes, every
        process waits for it), with the recipe and resolved config it was trained with (`training`) and the input
        convention of its data (`preprocessing`), once every process is found to hold the same parameters
        (`dslim.training.replicas`)."""
        self.accelerator.print(f"{self.name}: " + agree(self.accelerator, "parameters", parameter_digest(net)))
        if self.accelerator.is_main_process:
            training = {"recipe": self.recipe, "config": config_json(self.config)}
            size = self.config.model.input_size
            convention = preprocessing.record(self.config.data, size)
            save_supernet(net, self.layout.path(self.name, kind), recipe=self.recipe, stage=self.name,
                          input_size=size, training=training, preprocessing=convention, **extra)  # fmt: skip
        self.accelerator.wait_for_everyone()

    def save_subnets(self, net: Supernet, subnets: Mapping[str, Subnet], scores: Mapping[str, dict]) -> None:
        """Write this stage's named-subnets file: each subnet with its MACs, params and `scores[name]`, once every
        process is found to hold the same subnets."""
        found = json.dumps({name: subnet.to_json() for name, subnet in subnets.items()}, sort_keys=True)
        self.accelerator.print(f"{self.name}: " + agree(self.accelerator, "subnets", text_digest(found)))
        if self.accelerator.is_main_process:
            size = self.config.model.input_size
            entries = {}
            for name, subnet in subnets.items():
                cost = measure(net, size, subnet)
                entries[name] = {"subnet": subnet.to_json(), "macs": cost.macs, "params": cost.params,
                                 **scores.get(name, {})}  # fmt: skip
            write_json(self.layout.path(self.name, "subnets"), entries)
        self.accelerator.wait_for_everyone()
