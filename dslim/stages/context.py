"""What a stage sees while it runs: its settings, its inputs, and how to write its outputs."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator

from dslim.config import Config, TrainConfig
from dslim.errors import UserError
from dslim.evaluation.accuracy import evaluate
from dslim.evaluation.calibration import recalibrate, scratch_statistics
from dslim.io import write_json
from dslim.io.artifacts import save_supernet
from dslim.models import from_config
from dslim.models.base import Supernet
from dslim.models.complexity import measure
from dslim.stages.layout import RunLayout
from dslim.stages.registry import Stage
from dslim.stages.run import resolve
from dslim.subnet import Subnet
from dslim.training import Method, MetricsLog, Trainer
from dslim.training.replicas import agree, parameter_digest, text_digest


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

    def loader(self, split: str, epoch: int = 0):  # type: ignore[no-untyped-def]
        """This process's shard of `split`, deterministic per (seed, epoch)."""
        from dslim.data import build_loader

        acc = self.accelerator
        return build_loader(self.config.data, split, self.config.model.input_size,  # type: ignore[arg-type]
                            shard_id=acc.process_index, num_shards=acc.num_processes, seed=self.config.seed,
                            epoch=epoch)  # fmt: skip

    def training_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Training batches (train augmentation) for as many epochs as asked for."""
        for epoch in itertools.count():
            yield from self.loader("train", epoch)

    def trainer(self, net: Supernet, method: Method, settings: TrainConfig) -> Trainer:
        return Trainer(self.accelerator, net, method, settings, stage=self.name, state_dir=self.layout.state(self.name),
                       metrics=self.metrics, batch_size=self.config.data.batch_size, seed=self.config.seed)  # fmt: skip

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
    def save_supernet(self, net: Supernet, **extra: object) -> None:
        """Write this stage's `supernet` artifact (the main process writes; every process waits for it), once every
        process is found to hold the same parameters (`dslim.training.replicas`)."""
        self.accelerator.print(f"{self.name}: " + agree(self.accelerator, "parameters", parameter_digest(net)))
        if self.accelerator.is_main_process:
            save_supernet(net, self.layout.path(self.name, "supernet"), recipe=self.recipe, stage=self.name,
                          input_size=self.config.model.input_size, **extra)  # fmt: skip
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
