"""The training loop's parts: mixed precision, schedules, weight-decay groups, EMA, checkpoints, run directory."""

import json
import math

import pytest
import torch
from accelerate.state import AcceleratorState

from dslim.cli.train import split_options
from dslim.config import Config, OptimConfig, ScheduleConfig, replace
from dslim.errors import UserError
from dslim.io import is_temporary
from dslim.methods.sandwich import Sandwich, SandwichConfig
from dslim.models import create_supernet
from dslim.stages import select_stages
from dslim.stages.layout import RunLayout
from dslim.stages.record import check_record, write_record
from dslim.training import MetricsLog, Trainer, lr_at, make_accelerator, param_groups, update_ema


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def tiny(bn="calibrated"):
    torch.manual_seed(0)
    return create_supernet("mobilenet_v1", num_classes=10, max_width=0.5, widths=(0.25, 0.5),
                           width_range=(0.25, 0.5) if bn == "calibrated" else None, bn=bn)  # fmt: skip


def batches(n, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 32, 32, generator=g), torch.randint(0, 10, (size,), generator=g)) for _ in range(n)]


def train(tmp_path, cfg, data, mixed_precision="no", net=None):
    acc = make_accelerator(mixed_precision)
    trainer = Trainer(acc, net or tiny(), Sandwich(cfg), cfg, stage="supernet", state_dir=tmp_path / "state",
                      metrics=MetricsLog(tmp_path / "metrics.jsonl", acc), batch_size=8)  # fmt: skip
    trainer.fit(lambda epoch: data)
    return trainer


def test_bf16_steps_are_finite_and_keep_bn_statistics_fp32(tmp_path):
    cfg = SandwichConfig(epochs=1, ema_decay=0.5, distill="ieb", log_every=1)
    trainer = train(tmp_path, cfg, batches(2), "bf16", tiny("private"))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if r["kind"] == "step"]
    assert len(steps) == 2 and all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in steps)
    assert all(p.dtype == torch.float32 for p in trainer.supernet.parameters())
    assert all(b.dtype in (torch.float32, torch.int64) for b in trainer.supernet.buffers())
    assert all(torch.isfinite(b.float()).all() for b in trainer.supernet.buffers())


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 runs on a GPU")
def test_fp16_on_cpu_is_a_clear_user_error():
    # Accelerate does not refuse fp16 on a CPU: it silently trains in fp32. dslim says so instead.
    with pytest.raises(UserError, match="fp16 needs a GPU.*use bf16"):
        make_accelerator("fp16")


def test_cosine_schedule_with_warmup_and_cooldown():
    s = ScheduleConfig(kind="cosine", warmup_epochs=2, warmup_lr=1e-5, min_lr=1e-3, cooldown_epochs=2)
    at = [lr_at(step, 10, 12, 0.5, s) for step in range(120)]  # 10 steps per epoch, 12 epochs
    assert at[0] == pytest.approx(1e-5)
    assert at[10] == pytest.approx(1e-5 + (0.5 - 1e-5) / 2)  # half-way through warm-up
    assert at[20] == pytest.approx(0.5)  # warm-up done: peak
    assert at[60] == pytest.approx((0.5 + 1e-3) / 2)  # half-way through the decay (epochs 2..10)
    assert 1e-3 < at[99] < 1.5e-3
    assert at[100:] == [1e-3] * 20  # cool-down
    assert all(a >= b for a, b in zip(at[20:], at[21:]))


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("linear", {0: 0.4, 25: 0.2, 49: 0.4 * 1 / 50}),
        ("step", {0: 0.4, 19: 0.4, 20: 0.04, 39: 0.04, 40: 0.004}),
        ("exp", {0: 0.4, 9: 0.4, 10: 0.2, 30: 0.05}),
        ("constant", {0: 0.4, 49: 0.4}),
    ],
)
def test_other_schedules(kind, expected):
    s = ScheduleConfig(kind=kind, min_lr=0.0, milestones=(2, 4), gamma=0.1 if kind == "step" else 0.5)
    for step, lr in expected.items():
        assert lr_at(step, 10, 5, 0.4, s) == pytest.approx(lr), (kind, step)


def test_timm_cosine_per_epoch_from_epoch_zero():
    """DS-Net's schedule as timm 0.3.2 computes it (`CosineLRScheduler`, t_in_epochs, no warmup prefix): constant
    within an epoch, warm-up `1e-5 + e (0.08 - 1e-5) / 5`, then `1e-5 + (0.08 - 1e-5)(1 + cos(pi e / 150)) / 2`
    timed from epoch 0, and 1e-5 through 10 cool-down epochs."""
    s = ScheduleConfig(kind="cosine", warmup_epochs=5, warmup_lr=1e-5, min_lr=1e-5, cooldown_epochs=10,
                       per_epoch=True, warmup_prefix=False)  # fmt: skip

    def timm(e: int) -> float:
        if e < 5:
            return 1e-5 + e * (0.08 - 1e-5) / 5
        return 1e-5 + 0.5 * (0.08 - 1e-5) * (1 + math.cos(math.pi * e / 150)) if e < 150 else 1e-5

    for e in (0, 1, 4, 5, 6, 75, 149, 150, 159):
        for step in (e * 100, e * 100 + 99):  # first and last step of the epoch
            assert lr_at(step, 100, 160, 0.08, s) == pytest.approx(timm(e)), (e, step)


@pytest.mark.parametrize(
    ("global_batch", "processes", "most", "expected"),
    [
        (512, 8, 64, (64, 1)),
        (512, 1, 64, (64, 8)),
        (2048, 2, 300, (256, 4)),
        (320, 1, 64, (64, 5)),
        (64, 1, 2048, (64, 1)),
    ],
)
def test_global_batch_splits_into_micro_batches(global_batch, processes, most, expected):
    from dslim.stages.context import batching

    cfg = SandwichConfig(global_batch=global_batch)
    assert batching(cfg, most, "supernet", processes) == expected
    assert batching(SandwichConfig(grad_accum=3), most, "supernet", processes) == (most, 3)  # no global batch


def test_global_batch_that_cannot_be_split_is_refused():
    from dslim.stages.context import batching

    with pytest.raises(UserError, match="--stages.finetune.global-batch 320 cannot be split evenly into 3 processes"):
        batching(SandwichConfig(global_batch=320), 64, "finetune", 3)
    from dslim.stages.pipeline import check_training

    with pytest.raises(UserError, match="leave --stages.supernet.grad-accum at 1"):
        check_training(SandwichConfig(global_batch=512, grad_accum=2), "supernet")
    with pytest.raises(
        UserError, match="--stages.gate.ema-artifact hands on the EMA of the weights: set --stages.gate.ema-decay"
    ):
        check_training(SandwichConfig(ema_artifact=True), "gate")


def test_weight_decay_groups():
    net = tiny()
    bn_and_bias = {id(p) for n, p in net.named_parameters() if p.ndim == 1}
    depthwise = {id(m.weight) for m in net.modules() if getattr(m, "depthwise", False)}
    assert bn_and_bias and depthwise

    def groups(**kw):
        decay, no_decay = param_groups(net, list(net.parameters()), OptimConfig(weight_decay=1e-4, **kw))
        assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
        return {id(p) for p in decay["params"]}, {id(p) for p in no_decay["params"]}

    decay, no_decay = groups()
    assert no_decay == bn_and_bias and len(decay) + len(no_decay) == len(list(net.parameters()))
    decay, no_decay = groups(decay_depthwise=False)
    assert no_decay == bn_and_bias | depthwise
    decay, no_decay = groups(decay_norm_and_bias=True)
    assert not no_decay


def test_ema_update():
    a, b = tiny("private"), tiny("private")
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1.0)
        for buf in b.buffers():
            if buf.dtype.is_floating_point:
                buf.add_(2.0)
            else:
                buf.add_(3)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    update_ema(a, b, 0.75)
    for k, v in a.state_dict().items():
        expected = before[k] + (0.25 * (b.state_dict()[k] - before[k]) if v.dtype.is_floating_point else 3)
        torch.testing.assert_close(v, expected.to(v.dtype))


def test_checkpoints_keep_last_and_gradient_accumulation(tmp_path):
    cfg = SandwichConfig(epochs=2, grad_accum=2, checkpoint_every=1, keep_last=2, log_every=1)
    trainer = train(tmp_path, cfg, batches(5))  # 5 micro-batches: 2 steps per epoch, the 5th is dropped
    assert trainer.step == 4
    kept = [p.name for p in trainer.checkpoints()]
    assert kept == ["ckpt-000000003", "ckpt-000000004"]
    state = json.loads((tmp_path / "state" / kept[-1] / "trainer.json").read_text())
    assert (state["epoch"], state["batch"], state["step"]) == (2, 0, 4)
    assert not [p for p in (tmp_path / "state").iterdir() if is_temporary(p)]


def test_stage_selection_and_overrides_are_told_apart():
    stages, config_file, rest = split_options(["--recipe", "r", "--stages", "evaluate", "supernet",
                                               "--stages.supernet.epochs", "3"])  # fmt: skip
    assert stages == ["evaluate", "supernet"] and rest == ["--recipe", "r", "--stages.supernet.epochs", "3"]
    assert config_file is None
    assert split_options(["--stages.supernet.epochs", "3"]) == ([], None, ["--stages.supernet.epochs", "3"])
    # --tensorboard, the earlier switch, joins --log-with
    assert split_options(["--config", "c.json", "--log-with", "wandb", "--tensorboard"]) == (
        [], "c.json", ["--log-with", "wandb", "tensorboard"])  # fmt: skip
    config = Config(pipeline=("supernet", "bn_recalibration", "evaluate"))
    assert select_stages(config, stages) == ["supernet", "evaluate"]  # pipeline order
    assert select_stages(config, ["export"]) == ["export"]
    with pytest.raises(UserError, match="unknown stage"):
        select_stages(config, ["polish"])


def test_run_directory_refuses_another_config(tmp_path):
    layout = RunLayout(tmp_path)

    def record(config: Config, argv: list[str]) -> None:
        found = check_record(layout, config, "r", argv)
        if found is not None:
            write_record(layout, found)

    config = Config()
    record(replace(config, seed=3), ["z"])
    record(config, ["a"])  # no stage has started: nothing computed yet, any config may replace the first
    record(config, ["a"])  # the same: fine
    with pytest.raises(UserError, match="differs in stages.supernet.epochs"):
        (tmp_path / "supernet").mkdir()
        record(replace(config, **{"stages.supernet.epochs": 7}), ["b"])
    # Settings of a stage that has not started, and harmless ones, may change.
    record(replace(config, **{"stages.evaluate.subnets": ("1.0",), "data.workers": 1}), ["c"])
    record = json.loads((tmp_path / "config.json").read_text())
    assert record["config"]["stages"]["evaluate"]["subnets"] == ["1.0"] and record["history"] == [["z"], ["a"]]
    assert set(record["versions"]) >= {"torch", "accelerate", "dslim"}
