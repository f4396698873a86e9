"""Typed run configuration: frozen dataclasses that tyro turns into the command line.

A run is a recipe (a `Config` built in Python) plus command-line overrides. Every field has a docstring because
tyro shows it in `--help`, and a field whose values are bounded says so in its annotation
(`Annotated[int, at_least(1)]`), so that `validate_fields` checks a whole config before any work starts and names
the offending option as the user typed it.

Here live the settings every run shares (model, data, optimizer, schedule, the training loop); each stage's own
settings live with the stage or method that reads them (`dslim.stages`, `dslim.methods`) and register here, so that
`Config.stages` holds one of each registered stage (importing `dslim.stages`, which `dslim.recipes` and every
command do, registers the built-in stages).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from dslim.errors import UserError
from dslim.registry import Registry

BnMode = Literal["private", "switchable", "calibrated"]


# -- bounds on values ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """A bound on a field's value: `test(value)` must hold; `says` completes "must be ...". Applied to each entry
    of a tuple."""

    test: Callable[[Any], bool]
    says: str


def at_least(low: float) -> Check:
    return Check(lambda v: v >= low, f"at least {low}")


def in_range(low: float, high: float, *, open_low: bool = False) -> Check:
    bracket = "(" if open_low else "["
    return Check(lambda v: (v > low if open_low else v >= low) and v <= high, f"in {bracket}{low}, {high}]")


FINITE = Check(lambda v: math.isfinite(v), "a finite number")
Positive = Annotated[int, at_least(1)]
NonNegative = Annotated[int, at_least(0)]
Fraction = Annotated[float, in_range(0.0, 1.0)]
NonNegativeFloat = Annotated[float, at_least(0.0), FINITE]


def option_name(path: str) -> str:
    """`stages.supernet.grad_accum` -> `--stages.supernet.grad-accum`, as tyro spells it."""
    return "--" + path.replace("_", "-")


def validate_fields(obj: object, prefix: str = "") -> None:
    """Check every bounded field of a (nested) config; a `UserError` naming the first bad option otherwise."""
    hints = typing.get_type_hints(type(obj), include_extras=True)
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value, hint, path = getattr(obj, f.name), hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            validate_fields(value, path + ".")
            continue
        checks = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Check)]
        for v in value if isinstance(value, tuple) else (value,):
            for check in checks:
                if v is not None and not check.test(v):
                    raise UserError(f"{option_name(path)} {_show(value)}: must be {check.says}")


def _show(value: object) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


# -- settings every run shares -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig:
    """Which supernet to build and which of its subnets are named."""

    arch: str = "mobilenet_v1"
    """Supernet architecture (see `dslim.models.names()`)."""
    num_classes: Annotated[int, in_range(1, 1_000_000)] = 1000
    """Classifier outputs: at least the number of classes of the data."""
    input_size: Annotated[int, in_range(8, 4096)] = 224
    """Square input resolution used for profiling and training crops."""
    max_width: Annotated[float, in_range(0.0, 4.0, open_low=True)] = 1.0
    """Width multiplier of the supernet itself (1.5 for AutoSlim/DMCP MobileNetV2). Built-in width-multiplier
    models only (a converted model is at most its own width)."""
    widths: Annotated[tuple[float, ...], in_range(0.0, 4.0, open_low=True)] = (0.25, 0.5, 0.75, 1.0)
    """Named widths (width-multiplier models): the subnets trained by S-Net, evaluated and profiled by default."""
    width_range: Annotated[tuple[float, float] | None, in_range(0.0, 4.0, open_low=True)] = None
    """Universally slimmable range [min, max]: any width inside may be profiled, calibrated and evaluated."""
    bn: BnMode = "switchable"
    """BatchNorm: `private` (shared affine, statistics per subnet), `switchable` (affine and statistics per
    subnet), `calibrated` (shared affine, statistics computed after training for any subnet)."""
    dropout: Annotated[float, in_range(0.0, 1.0)] = 0.0
    """Dropout before the classifier (DS-Net: at its largest subnet only, as the original)."""
    gate_routes: Annotated[int, in_range(0, 14)] = 4
    """DS-Net: routes the gate chooses among (the slimmest `uniform-0` .. `uniform-(R-1)`; official: 4)."""
    block_policy: bool = False
    """BlockDrop: attach a policy network choosing, per image, which residual blocks run (ResNets)."""
    channel_bins: Annotated[int, in_range(0, 64)] = 12
    """Channel bins per group (AutoSlim: 12): per-group random subnets (`--stages.supernet.sampler groups`) and the
    greedy search move each group in steps of 1/N of its widest width, rounded by the architecture's rule
    (MobileNets: multiples of 8; ResNets: int); 0: one channel per step. Groups with their own choices (DS-Net)
    ignore it."""
    min_bin: Positive = 1
    """Smallest bin a group may shrink to, at most `channel_bins` (mmrazor's AutoSlim: 2 of 12)."""
    prune_head: bool = False
    """MobileNet v2 / MNasNet: make the last 1x1 conv a channel group of its own (`head`), pruned like every other
    layer (the original DMCP prunes it by its own chain); off, it keeps its 1280 x max(1, max-width) channels in
    every subnet, as the slimmable networks' S-/US-MobileNet v2. Other architectures prune every layer already (a
    converted model too: the `dmcp_*` recipes' setting holds for it)."""
    module: str | None = None
    """A model of your own instead of `arch`: `FILE.py:NAME` or `package.module:NAME`, a class or a function
    returning an `nn.Module` (given `num_classes` if it takes that argument). Its file runs (as timm or torch.hub
    would); what dslim writes reloads without it. See docs/your-model.md."""
    module_args: tuple[str, ...] = ()
    """Constructor arguments of `--model.module` as `NAME=VALUE` (VALUE read as JSON, else as a string)."""
    weights: str | None = None
    """Weights to load into `--model.module` before it is converted: safetensors or a torch file (read with
    `weights_only=True`)."""
    channel_divisor: Annotated[int, in_range(1, 1024)] = 1
    """Converted models: channel counts of a width are rounded to multiples of this (8 as the MobileNets do)."""
    channel_order: Literal["original", "bn", "l1"] = "original"
    """Converted models: which channels a narrower subnet keeps first: the model's own order, or the most important
    by BatchNorm scale (`bn`) or by the L1 norm of their weights (`l1`); the full model is unchanged either way."""


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and how they are decoded and augmented."""

    root: str = "digits"
    """Dataset root with `train/<class>/*` and `val/<class>/*` (ImageFolder), a folder of WebDataset shards
    `train-*.tar` / `val-*.tar`, an extracted CIFAR folder (`cifar-10-batches-bin`, `cifar-100-binary`,
    `cifar-10-batches-py` or `cifar-100-python`), or `digits` for the built-in handwritten digits, `digits-hard` for
    their harder variant (scale, position, clutter, occlusion, noise; `dslim.data.digits_hard`)."""
    format: Literal["folder", "webdataset", "cifar"] = "folder"
    """Layout of `root`; `cifar` reads CIFAR-10/100 files into memory (their test batch is the `val` split)."""
    holdout: NonNegative = 0
    """N training images set aside, deterministically, never trained on; the `holdout` split; used by AutoSlim's
    search and DMCP's validation. The same images whatever the run's seed, stratified by class."""
    loader: Literal["dali", "pil"] = "dali"
    """`dali`: NVIDIA DALI pipelines; `pil`: PIL + torch DataLoader fallback with the same transforms."""
    decoder: Literal["cpu", "mixed"] = "cpu"
    """DALI decoder device: `mixed` decodes on the GPU (needs CUDA), `cpu` anywhere."""
    batch_size: Annotated[int, in_range(1, 1_000_000)] = 64
    """Images per process per step (training)."""
    eval_batch_size: Annotated[int, in_range(1, 1_000_000)] = 100
    """Images per process per step (evaluation)."""
    workers: Annotated[int, in_range(0, 1024)] = 2
    """DALI threads / DataLoader workers per process."""
    augment: Literal["random_resized_crop", "pad_crop"] = "random_resized_crop"
    """Training crop: `random_resized_crop` (ImageNet: a random area and aspect ratio, resized to `input_size`) or
    `pad_crop` (CIFAR: zero-pad by `pad` on each side, then a random `input_size` window, no resizing)."""
    random_area: Annotated[tuple[float, float], in_range(0.0, 1.0, open_low=True)] = (0.08, 1.0)
    """RandomResizedCrop area range."""
    random_aspect_ratio: Annotated[tuple[float, float], in_range(0.0, 100.0, open_low=True)] = (0.75, 4.0 / 3.0)
    """RandomResizedCrop aspect-ratio range."""
    pad: Annotated[int, in_range(0, 1024)] = 4
    """Zero padding on each side before the `pad_crop` window is drawn."""
    flip: bool = True
    """Random horizontal flip in training (off for digits, whose mirror images are other shapes)."""
    crop_fraction: Annotated[float, in_range(0.0, 1.0, open_low=True)] = 0.875
    """Evaluation: resize the shorter side to `input_size / crop_fraction`, then center-crop `input_size`."""
    mean: Annotated[tuple[float, float, float], FINITE] = (0.485, 0.456, 0.406)
    """Per-channel mean (of pixel values in [0, 1])."""
    std: Annotated[tuple[float, float, float], in_range(0.0, 1e6, open_low=True)] = (0.229, 0.224, 0.225)
    """Per-channel standard deviation (of pixel values in [0, 1])."""
    cache_dir: str = "~/.cache/dslim"
    """Where the built-in data sets are written as PNG files once."""


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and the originals' weight-decay rules."""

    name: Literal["sgd", "adamw", "adam"] = "sgd"
    """SGD (momentum, optionally Nesterov), AdamW (decoupled decay) or Adam (L2 decay, as BlockDrop)."""
    lr: NonNegativeFloat = 0.1
    """Peak learning rate for a global batch of `lr_batch` images; scaled linearly to the actual global batch."""
    lr_batch: Positive = 256
    """Global batch size `lr` is quoted for (the original's batch, e.g. 512 = 64 x 8 GPUs)."""
    momentum: Fraction = 0.9
    """SGD momentum."""
    nesterov: bool = True
    """Nesterov momentum (SGD)."""
    betas: Annotated[tuple[float, float], in_range(0.0, 1.0)] = (0.9, 0.999)
    """Adam(W) betas."""
    weight_decay: NonNegativeFloat = 1e-4
    """Weight decay on conv and linear weights."""
    decay_norm_and_bias: bool = False
    """Also decay 1-D parameters (BatchNorm affine, biases); the originals do not."""
    decay_depthwise: bool = True
    """Decay depthwise conv weights (US-Nets do not)."""
    grad_clip: NonNegativeFloat = 0.0
    """Clip the gradient norm to this value; 0 disables. Always passed explicitly (DeepSpeed clips to 1.0 by
    default otherwise)."""


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule over a stage's epochs (stepped per optimizer step)."""

    kind: Literal["cosine", "linear", "step", "exp", "constant"] = "cosine"
    """Cosine to `min_lr`, linear decay to `min_lr`, step decay by `gamma` at `milestones`, exponential decay by
    `gamma` per epoch, or constant."""
    warmup_epochs: NonNegativeFloat = 0.0
    """Linear warm-up from `warmup_lr` to the peak."""
    warmup_lr: NonNegativeFloat = 1e-5
    """Learning rate at the start of warm-up."""
    min_lr: NonNegativeFloat = 0.0
    """Final learning rate of the decay, kept through the cool-down epochs."""
    cooldown_epochs: NonNegative = 0
    """Epochs at `min_lr` after the decay (counted inside the stage's epochs)."""
    milestones: Annotated[tuple[int, ...], at_least(0)] = ()
    """Epochs at which `step` multiplies the rate by `gamma`."""
    gamma: NonNegativeFloat = 0.1
    """Factor of `step` (per milestone) and `exp` (per epoch) decay."""


@dataclass(frozen=True)
class TrainConfig:
    """The training loop of a stage: how long, with which optimizer and schedule, how it saves and logs.

    Each method's settings are a subclass of this with the fields that method reads (`dslim.methods`).
    """

    epochs: Annotated[int, in_range(1, 100_000)] = 1
    """Epochs of this stage."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    ema_decay: Annotated[float, in_range(0.0, 1.0)] = 0.0
    """Decay of the weights' exponential moving average (0: no EMA)."""
    grad_accum: Positive = 1
    """Micro-batches per optimizer step."""
    checkpoint_every: NonNegative = 0
    """Also checkpoint every N optimizer steps inside an epoch (0: at epoch ends only)."""
    keep_last: Positive = 2
    """Resumable checkpoints kept per stage."""
    log_every: Positive = 10
    """Optimizer steps between lines of `metrics.jsonl` (and TensorBoard points); epoch summaries are always logged."""


@dataclass(frozen=True)
class StagesConfig:
    """Settings of every stage a recipe may run: one field per registered stage (`stages_config`)."""


STAGE_SETTINGS: Registry[tuple[type, str]] = Registry("stage")
"""Each registered stage's settings class and one-line description."""
_stages_class: type | None = None


def register_settings(name: str, settings: type, doc: str) -> None:
    """Add a stage's settings class as `Config.stages.<name>` (`dslim.stages.register_stage` calls this)."""
    global _stages_class
    STAGE_SETTINGS.register(name, (settings, doc))
    _stages_class = None  # rebuilt with the new stage on next use


def stages_config_class() -> type:
    """The dataclass holding one settings object per registered stage (a subclass of `StagesConfig`); tyro shows
    each stage's one-line description above its options."""
    global _stages_class
    if not STAGE_SETTINGS.names():  # a Config built now would silently lack every stage's settings
        raise RuntimeError("no stage is registered: import dslim.stages (or dslim.recipes) before building a Config")
    if _stages_class is None:
        import tyro

        fields = [
            (name, Annotated[cls, tyro.conf.arg(help=doc)], field(default_factory=cls))
            for name, (cls, doc) in STAGE_SETTINGS.items()
        ]
        _stages_class = dataclasses.make_dataclass("StagesConfig", fields, bases=(StagesConfig,), frozen=True)
    return _stages_class


def stages_config(**settings: object) -> StagesConfig:
    """Settings of every registered stage: the given ones, the others at their defaults."""
    for name, value in settings.items():
        cls = STAGE_SETTINGS.get(name)[0]
        if not isinstance(value, cls):
            raise UserError(f"stage {name} takes {cls.__name__}, not {type(value).__name__}")
    return stages_config_class()(**settings)


@dataclass(frozen=True)
class Config:
    """A whole run: model, data, and the stages of its pipeline."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stages: StagesConfig = field(default_factory=stages_config)
    pipeline: tuple[str, ...] = ("supernet", "bn_recalibration", "evaluate")
    """Stages this recipe runs, in order (`--stages NAME ...` runs a selection of them)."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast precision of the forward passes; BN statistics and master weights stay fp32."""
    seed: NonNegative = 0
    """Random seed (every process draws the same subnets)."""
    tensorboard: bool = False
    """Also log metrics to TensorBoard under `<out-dir>/tensorboard` (Accelerate tracker; needs `tensorboard`)."""


def replace(obj, **changes):  # type: ignore[no-untyped-def]
    """`dataclasses.replace` that accepts dotted paths: `replace(cfg, **{"model.arch": "resnet50"})`."""
    nested: dict[str, dict[str, object]] = {}
    flat: dict[str, object] = {}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            flat[head] = value
    for head, sub in nested.items():
        flat[head] = replace(flat.get(head, getattr(obj, head)), **sub)
    return dataclasses.replace(obj, **flat)
