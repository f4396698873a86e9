"""Typed run configuration: frozen dataclasses that tyro turns into the command line.

A run is a recipe (a `Config` built in Python) plus command-line overrides. Every field has a docstring because
tyro shows it in `--help`, and a field whose values are bounded says so in its annotation
(`Annotated[int, at_least(1)]`, `dslim.bounds`), so that `validate_fields` checks a whole config before any work
starts and names the offending option as the user typed it.

Here live the settings every run shares (model, data, optimizer, schedule, the training loop); each stage's own
settings live with the stage or method that reads them (`dslim.stages`, `dslim.methods`) and register here, so that
`Config.stages` holds one of each registered stage (importing `dslim.stages`, which `dslim.recipes` and every
command do, registers the built-in stages).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Literal

# re-exported: settings everywhere declare their bounds with these
from dslim.bounds import (  # noqa: F401
    FINITE,
    Check,
    Fraction,
    NonNegative,
    NonNegativeFloat,
    Positive,
    at_least,
    in_range,
    option_name,
    validate_fields,
)
from dslim.errors import UserError
from dslim.registry import Registry

BnMode = Literal["private", "switchable", "calibrated"]


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
    """Channel counts are multiples of this (8: what CPU and GPU kernels run fastest, as the MobileNets do) in a
    converted model's widths, and in searched (AutoSlim) and sampled (DMCP) subnets of any model, in every group
    without choices of its own, besides the group's full width."""
    channel_order: Literal["original", "bn", "l1"] = "original"
    """Converted models: which channels a narrower subnet keeps first: the model's own order, or the most important
    by BatchNorm scale (`bn`) or by the L1 norm of their weights (`l1`); the full model is unchanged either way."""


@dataclass(frozen=True)
class RandAugmentConfig:
    """RandAugment as timm 0.3 draws it (`rand-m9-mstd0.5`: DS-Net): per image, `layers` ops chosen uniformly with
    replacement among 15 (auto-contrast, equalize, invert, rotate, posterize, solarize, solarize-add, colour,
    contrast, brightness, sharpness, shear x/y, translate x/y), each applied with probability `prob` at a magnitude
    drawn from N(`magnitude`, `magnitude_std`) clipped to [0, 10]."""

    layers: Annotated[int, in_range(0, 16)] = 0
    """Ops per image (timm's `n`; 0: no RandAugment)."""
    magnitude: Annotated[float, in_range(0.0, 10.0)] = 9.0
    """Mean magnitude, on timm's scale of 0 to 10 (`m`)."""
    magnitude_std: NonNegativeFloat = 0.5
    """Standard deviation of each op's magnitude (`mstd`)."""
    prob: Fraction = 0.5
    """Probability that a chosen op is applied."""


@dataclass(frozen=True)
class ErasingConfig:
    """Random erasing (Zhong et al.) as timm draws it, on the normalized image: with probability `prob`, `count`
    rectangles of area uniform in `area` (split among them) and log-uniform aspect ratio in [`min_aspect`,
    1 / `min_aspect`], ten attempts each to fit."""

    prob: Fraction = 0.0
    """Probability that an image is erased (0: never)."""
    mode: Literal["pixel", "rand", "const"] = "pixel"
    """Fill: per-pixel standard normal noise (`pixel`), one normal colour per rectangle (`rand`), or zeros."""
    area: Annotated[tuple[float, float], in_range(0.0, 1.0, open_low=True)] = (0.02, 1 / 3)
    """Range of the erased fraction of the image."""
    min_aspect: Annotated[float, in_range(0.0, 1.0, open_low=True)] = 0.3
    """Smallest aspect ratio of a rectangle (the largest is its inverse)."""
    count: Annotated[int, in_range(1, 100)] = 1
    """Rectangles per erased image."""


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
    augment: Literal["random_resized_crop", "pad_crop", "resize_crop"] = "random_resized_crop"
    """Training crop: `random_resized_crop` (ImageNet: a random area and aspect ratio, resized to `input_size`),
    `pad_crop` (CIFAR: zero-pad by `pad` on each side, then a random `input_size` window, no resizing) or
    `resize_crop` (the shorter side resized as for evaluation, then a random `input_size` window: BlockDrop's
    ImageNet crop)."""
    random_area: Annotated[tuple[float, float], in_range(0.0, 1.0, open_low=True)] = (0.08, 1.0)
    """RandomResizedCrop area range (the slimmable networks' "mobile" transform: 0.25 to 1)."""
    random_aspect_ratio: Annotated[tuple[float, float], in_range(0.0, 100.0, open_low=True)] = (0.75, 4.0 / 3.0)
    """RandomResizedCrop aspect-ratio range."""
    pad: Annotated[int, in_range(0, 1024)] = 4
    """Zero padding on each side before the `pad_crop` window is drawn."""
    flip: bool = True
    """Random horizontal flip in training (off for digits, whose mirror images are other shapes)."""
    interpolation: Literal["bilinear", "bicubic", "random"] = "bilinear"
    """Resampling of the training crop (and of RandAugment's geometric ops): `random` picks bilinear or bicubic per
    image (timm's `random`)."""
    color_jitter: Annotated[tuple[float, float, float, float], in_range(0.0, 1.0)] = (0.0, 0.0, 0.0, 0.0)
    """Brightness, contrast, saturation and hue jitter, drawn as torchvision's `ColorJitter`: factors uniform in
    [1 - v, 1 + v], hue a rotation uniform in [-v, v] turns (at most 0.5). All four are applied as one affine map of
    the colours (hue rotates the chroma in YIQ space, where torchvision shifts HSV hue), clipped once."""
    lighting: Annotated[float, in_range(0.0, 10.0)] = 0.0
    """Standard deviation of AlexNet's PCA lighting noise (ImageNet eigenvectors, on pixel values in [0, 1])."""
    randaugment: RandAugmentConfig = field(default_factory=RandAugmentConfig)
    erasing: ErasingConfig = field(default_factory=ErasingConfig)
    crop_fraction: Annotated[float, in_range(0.0, 1.0, open_low=True)] = 0.875
    """Evaluation: resize the shorter side to `input_size / crop_fraction`, then center-crop `input_size`."""
    eval_interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    """Resampling of the evaluation resize (DS-Net's timm pipeline: bicubic)."""
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
    """Learning-rate schedule over a stage's epochs (a function of the optimizer step)."""

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
    per_epoch: bool = False
    """Change the rate at epoch boundaries only, as a scheduler stepped once per epoch does (timm's, torch's
    `MultiStepLR`, BlockDrop's); otherwise at every optimizer step."""
    warmup_prefix: bool = True
    """The decay starts when warm-up ends; False: it is timed from epoch 0 and warm-up replaces its first epochs
    (timm's default, so DS-Net's cosine)."""


@dataclass(frozen=True)
class TrainConfig:
    """The training loop of a stage: how long, with which optimizer and schedule, how it saves and logs.

    Each method's settings are a subclass of this with the fields that method reads (`dslim.methods`).
    """

    epochs: Annotated[int, in_range(1, 100_000)] = 1
    """Epochs of this stage."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    global_batch: NonNegative = 0
    """Images per optimizer step, over all processes and accumulated micro-batches (the original's GPUs x per-GPU
    batch): each process reads micro-batches of at most `data.batch_size` and accumulates as many as it takes.
    0: `data.batch_size` per process and `grad_accum` micro-batches."""
    ema_decay: Annotated[float, in_range(0.0, 1.0)] = 0.0
    """Decay of the weights' exponential moving average (0: no EMA). The EMA is validated after every epoch and
    written beside the stage's artifact (`<stage>/ema.safetensors`)."""
    ema_artifact: bool = False
    """Hand on the EMA: the stage's artifact (what later stages, `evaluate` and `export` read) holds the EMA, and
    the trained weights are written beside it (`<stage>/weights.safetensors`). DS-Net's gate: the original reports
    its EMA."""
    grad_accum: Positive = 1
    """Micro-batches per optimizer step (with `global_batch` 0)."""
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
    log_with: tuple[Literal["tensorboard", "wandb", "mlflow", "trackio", "all"], ...] = ()
    """Also log to these experiment trackers (Accelerate's; `all`: each one installed): loss terms, learning rates,
    per-subnet validation accuracy, the final evaluation. TensorBoard writes to `<out-dir>/tensorboard/`;
    `--tensorboard` is an alias of `--log-with tensorboard`."""


def config_json(config: Config) -> dict:
    """The resolved config as plain JSON: what a run's config.json, every artifact's metadata and every card record
    (`dslim.train --config` reads it back)."""
    import json

    return json.loads(json.dumps(dataclasses.asdict(config)))


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
