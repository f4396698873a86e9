"""A new method needs no core change: a stage and a method with two optimizers, defined here and nowhere else, run
through the real pipeline, switch phase halfway, survive SIGKILL and resume to bit-identical weights.

Run as a script, this file is the training process the test starts (and kills).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from dslim.config import Config, DataConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig
from dslim.models.base import Supernet
from dslim.stages import StageContext, register_stage, run_pipeline, stages_config
from dslim.training import Batch, Method, ParamSet, StepContext, Update, Where

SWITCH = 0.5


@dataclass(frozen=True)
class ToyConfig(TrainConfig):
    """A toy method: weights on the labels; from half-way, also a logit calibrator of its own."""

    arch_optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adam", lr=0.01, lr_batch=128))
    """Optimizer of the calibrator."""
    arch_schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(kind="constant"))
    """Schedule of the calibrator, from the switch to the end."""


class Toy(Method):
    def __init__(self, cfg: ToyConfig) -> None:
        self.cfg = cfg

    def param_sets(self, net: Supernet) -> dict[str, ParamSet]:
        weights = [p for n, p in net.named_parameters() if not n.startswith("calibrator.")]
        return {
            "weights": ParamSet(weights, self.cfg.optim, self.cfg.schedule),
            "arch": ParamSet(
                list(net.calibrator.parameters()),
                self.cfg.arch_optim,
                self.cfg.arch_schedule,
                start_epoch=SWITCH * self.cfg.epochs,
            ),  # fmt: skip
        }

    def updates(self, where: Where, sets) -> list[Update]:  # type: ignore[no-untyped-def]
        weights = Update(("weights",), self.weight_pass)
        return [weights] if where.fraction < SWITCH else [weights, Update(("arch",), self.arch_pass)]

    def weight_pass(self, model: nn.Module, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        images, labels = batch
        ctx.supernet.train()
        with ctx.backward_pass(last=True):
            ctx.supernet.set_subnet(ctx.supernet.largest())
            loss = F.cross_entropy(model(images), labels)
            ctx.backward(loss)
        return {"loss": loss.detach()}

    def arch_pass(self, model: nn.Module, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        images, labels = batch
        assert model is ctx.supernet and not any(p.requires_grad for p in ctx.supernet.stem.parameters())
        with ctx.backward_pass(last=True):
            loss = F.cross_entropy(ctx.supernet.calibrator(model(images)), labels)
            ctx.backward(loss)
        return {"loss/arch": loss.detach()}


def toy_stage(ctx: StageContext) -> None:
    """The toy method's stage."""
    net = ctx.supernet()
    net.calibrator = nn.Linear(10, 10).to(net.device)
    trainer = ctx.trainer(net, Toy(ctx.settings), ctx.settings)  # type: ignore[arg-type]
    trainer.fit(lambda epoch: ctx.loader("train", epoch))
    ctx.save_supernet(net)


def config(cache: str) -> Config:
    model = ModelConfig(arch="mobilenet_v1", num_classes=10, input_size=32, max_width=0.25, widths=(0.25,),
                        bn="calibrated")  # fmt: skip
    data = DataConfig(cache_dir=cache, batch_size=128, random_area=(0.5, 1.0), flip=False, workers=1)
    toy = ToyConfig(epochs=2, checkpoint_every=3, optim=OptimConfig(lr=0.05, lr_batch=128))
    return Config(model=model, data=data, stages=stages_config(toy=toy), pipeline=("toy",))


def launch(out: Path, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    log = open(out.parent / f"{out.name}.log", "a")
    return subprocess.Popen([sys.executable, __file__, str(out), str(cache)], env=env, stdout=log, stderr=log)


def finish(proc: subprocess.Popen, out: Path) -> None:
    proc.wait(timeout=600)
    assert proc.returncode == 0, (out.parent / f"{out.name}.log").read_text()[-3000:]


@pytest.mark.slow
def test_two_optimizer_method_defined_here_resumes_bit_identically(tmp_path, digits_cache):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    finish(launch(straight, digits_cache), straight)
    victim = launch(killed, digits_cache)
    state = killed / "toy" / "state"
    deadline = time.time() + 600
    # 11 steps per epoch, 22 in all: the calibrator learns from step 11; kill after a checkpoint in that phase.
    while not any(int(p.name[5:]) > 11 for p in state.glob("ckpt-*")):
        assert victim.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.time() < deadline, "no checkpoint of the second phase within 10 minutes"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (killed / "toy" / "model.safetensors").exists(), "killed too late: the stage had finished"
    finish(launch(killed, digits_cache), killed)
    assert "toy: resuming from" in (tmp_path / "killed.log").read_text()

    a, b = load_file(straight / "toy" / "model.safetensors"), load_file(killed / "toy" / "model.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("calibrator.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["calibrator.weight"], nn.Linear(10, 10).weight), "the calibrator never trained"
    steps = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r["kind"] == "step"]
    assert [r["step"] for r in steps if "loss/arch" in r] == [r["step"] for r in steps if r["step"] > 11]
    assert all(r["lr/arch"] == 0 for r in steps if r["step"] <= 11)


if __name__ == "__main__":  # registered in the training process only: the test process's stages stay the shipped ones
    register_stage("toy", ToyConfig, from_scratch=True)(toy_stage)
    torch.manual_seed(0)
    run_pipeline(config(sys.argv[2]), sys.argv[1], recipe="toy", argv=sys.argv)
