"""Typed run configuration: frozen dataclasses that tyro turns into the command line.

A run is a recipe (a `Config` built in Python) plus command-line overrides. Every field has a docstring
because tyro shows it in `--help`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

BnMode = Literal["private", "switchable", "calibrated"]


@dataclass(frozen=True)
class ModelConfig:
    """Which supernet to build and which of its subnets are named."""

    arch: str = "mobilenet_v1"
    """Supernet architecture (see `dslim.models.names()`)."""
    num_classes: int = 1000
    """Classifier outputs."""
    input_size: int = 224
    """Square input resolution used for profiling and training crops."""
    max_width: float = 1.0
    """Width multiplier of the supernet itself (1.5 for AutoSlim/DMCP MobileNetV2). Width-multiplier models only."""
    widths: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    """Named widths (width-multiplier models): the subnets trained by S-Net, evaluated and profiled by default."""
    width_range: tuple[float, float] | None = None
    """Universally slimmable range [min, max]: any width inside may be profiled, calibrated and evaluated."""
    bn: BnMode = "switchable"
    """BatchNorm: `private` (shared affine, statistics per subnet), `switchable` (affine and statistics per
    subnet), `calibrated` (shared affine, statistics computed after training for any subnet)."""
    dropout: float = 0.0
    """Dropout before the classifier."""
    gate_routes: int = 4
    """DS-Net: routes the gate chooses among (the slimmest `uniform-0` .. `uniform-(R-1)`; official: 4)."""


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and how they are decoded and augmented."""

    root: str = "digits"
    """Dataset root with `train/<class>/*` and `val/<class>/*` (ImageFolder), a folder of WebDataset shards
    `train-*.tar` / `val-*.tar`, an extracted CIFAR folder (`cifar-10-batches-bin`, `cifar-100-binary`,
    `cifar-10-batches-py` or `cifar-100-python`), or `digits` for the built-in handwritten digits."""
    format: Literal["folder", "webdataset", "cifar"] = "folder"
    """Layout of `root`; `cifar` reads CIFAR-10/100 files into memory (their test batch is the `val` split)."""
    holdout: int = 0
    """N training images set aside, deterministically, never trained on; the `holdout` split; used by AutoSlim's
    search and DMCP's validation. The same images whatever the run's seed, stratified by class."""
    loader: Literal["dali", "pil"] = "dali"
    """`dali`: NVIDIA DALI pipelines; `pil`: PIL + torch DataLoader fallback with the same transforms."""
    decoder: Literal["cpu", "mixed"] = "cpu"
    """DALI decoder device: `mixed` decodes on the GPU (needs CUDA), `cpu` anywhere."""
    batch_size: int = 64
    """Images per process per step (training)."""
    eval_batch_size: int = 100
    """Images per process per step (evaluation)."""
    workers: int = 2
    """DALI threads / DataLoader workers per process."""
    augment: Literal["random_resized_crop", "pad_crop"] = "random_resized_crop"
    """Training crop: `random_resized_crop` (ImageNet: a random area and aspect ratio, resized to `input_size`) or
    `pad_crop` (CIFAR: zero-pad by `pad` on each side, then a random `input_size` window, no resizing)."""
    random_area: tuple[float, float] = (0.08, 1.0)
    """RandomResizedCrop area range."""
    random_aspect_ratio: tuple[float, float] = (0.75, 4.0 / 3.0)
    """RandomResizedCrop aspect-ratio range."""
    pad: int = 4
    """Zero padding on each side before the `pad_crop` window is drawn."""
    flip: bool = True
    """Random horizontal flip in training (off for digits, whose mirror images are other shapes)."""
    crop_fraction: float = 0.875
    """Evaluation: resize the shorter side to `input_size / crop_fraction`, then center-crop `input_size`."""
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    """Per-channel mean (of pixel values in [0, 1])."""
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    """Per-channel standard deviation (of pixel values in [0, 1])."""
    cache_dir: str = "~/.cache/dslim"
    """Where the built-in digits are written as PNG files once."""


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and the originals' weight-decay rules."""

    name: Literal["sgd", "adamw"] = "sgd"
    """SGD (momentum, optionally Nesterov) or AdamW."""
    lr: float = 0.1
    """Peak learning rate for a global batch of `lr_batch` images; scaled linearly to the actual global batch."""
    lr_batch: int = 256
    """Global batch size `lr` is quoted for (the original's batch, e.g. 512 = 64 x 8 GPUs)."""
    momentum: float = 0.9
    """SGD momentum."""
    nesterov: bool = True
    """Nesterov momentum (SGD)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    weight_decay: float = 1e-4
    """Weight decay on conv and linear weights."""
    decay_norm_and_bias: bool = False
    """Also decay 1-D parameters (BatchNorm affine, biases); the originals do not."""
    decay_depthwise: bool = True
    """Decay depthwise conv weights (US-Nets do not)."""
    grad_clip: float = 0.0
    """Clip the gradient norm to this value; 0 disables. Always passed explicitly (DeepSpeed clips to 1.0 by
    default otherwise)."""


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule over a stage's epochs (stepped per optimizer step)."""

    kind: Literal["cosine", "linear", "step", "exp", "constant"] = "cosine"
    """Cosine to `min_lr`, linear decay to `min_lr`, step decay by `gamma` at `milestones`, exponential decay by
    `gamma` per epoch, or constant."""
    warmup_epochs: float = 0.0
    """Linear warm-up from `warmup_lr` to the peak."""
    warmup_lr: float = 1e-5
    """Learning rate at the start of warm-up."""
    min_lr: float = 0.0
    """Final learning rate of the decay, kept through the cool-down epochs."""
    cooldown_epochs: int = 0
    """Epochs at `min_lr` after the decay (counted inside the stage's epochs)."""
    milestones: tuple[int, ...] = ()
    """Epochs at which `step` multiplies the rate by `gamma`."""
    gamma: float = 0.1
    """Factor of `step` (per milestone) and `exp` (per epoch) decay."""


@dataclass(frozen=True)
class TrainConfig:
    """A training stage: how long, with which optimizer, and what each step computes."""

    epochs: int = 1
    """Epochs of this stage."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    label_smoothing: float = 0.1
    """Label smoothing of the cross-entropy on labels."""
    ema_decay: float = 0.0
    """Decay of the weights' exponential moving average (0: no EMA). IEB needs it: its teacher is the EMA."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    rule: Literal["sandwich", "all_widths", "single"] = "sandwich"
    """Subnets per step: `sandwich` (largest, smallest, `num_random` random), `all_widths` (S-Net: every named
    width, largest first), `single` (the largest only, e.g. retraining a fixed subnet)."""
    num_random: int = 2
    """Random subnets per sandwich step (n - 2 of the sandwich rule)."""
    random_subnets: tuple[str, ...] = ()
    """Names the random subnets are drawn from (DS-Net: uniform-1..12); empty: any width in the range."""
    distill: Literal["none", "inplace", "ieb"] = "inplace"
    """Targets of the non-largest subnets: labels (`none`), the online largest's detached softmax (`inplace`),
    or the EMA model's largest (`ieb`, in-place ensemble bootstrapping)."""
    ensemble_ib: bool = False
    """IEB: the smallest's target is the mean of the EMA softmaxes of the largest and the random subnets."""
    eval_subnets: tuple[str, ...] = ()
    """Subnets evaluated after each epoch (empty: smallest and largest)."""
    checkpoint_every: int = 0
    """Also checkpoint every N optimizer steps inside an epoch (0: at epoch ends only)."""
    keep_last: int = 2
    """Resumable checkpoints kept per stage."""
    log_every: int = 10
    """Optimizer steps between lines of `metrics.jsonl` (and TensorBoard points); epoch summaries are always logged."""


@dataclass(frozen=True)
class GateConfig(TrainConfig):
    """DS-Net stage II: only the gate trains, the supernet frozen with BatchNorm in eval mode.

    Loss per image: `sgs_weight * CE(gate logits, SGS target) + CE(dynamic output, label)
    + macs_weight * (routed MAdds / macs_unit)^2`; the SGS target is the slimmest route if the smallest subnet
    classifies the image correctly, else the widest ("sandwich gate sparsification").
    """

    sgs_weight: float = 1.0
    """Weight of the gate's cross-entropy against the SGS target (on logits, not the original's double softmax)."""
    macs_weight: float = 0.5
    """Weight of the squared per-image MAdds penalty."""
    macs_unit: float = 1e9
    """MAdds are divided by this before squaring (1e9: GMAdds, as the original)."""
    gumbel_tau: float = 1.0
    """Gumbel-softmax temperature of the straight-through route samples in training."""


@dataclass(frozen=True)
class BnCalibrationConfig:
    """BN recalibration: reset, then cumulative statistics per subnet from training batches, no gradients."""

    batches: int = 100
    """Training batches per subnet (per process; statistics are averaged across processes)."""
    subnets: tuple[str, ...] = ()
    """Subnets to calibrate (empty: every named subnet)."""


@dataclass(frozen=True)
class EvalConfig:
    """Final evaluation."""

    subnets: tuple[str, ...] = ()
    """Subnets to evaluate (empty: every named subnet)."""
    calibrate_batches: int = 50
    """For calibrated-BN models: batches used to calibrate a subnet that has no statistics yet."""


@dataclass(frozen=True)
class ExportConfig:
    """The optional `export` stage: subnets written as standalone models (physically sliced weights)."""

    subnets: tuple[str, ...] = ()
    """Subnets to write as `export/<name>.safetensors` (empty: every named subnet)."""


@dataclass(frozen=True)
class StagesConfig:
    """Settings of every stage a recipe may run."""

    supernet: TrainConfig = field(default_factory=TrainConfig)
    bn_recalibration: BnCalibrationConfig = field(default_factory=BnCalibrationConfig)
    gate: GateConfig = field(default_factory=lambda: GateConfig(distill="none", ema_decay=0.0))
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


@dataclass(frozen=True)
class Config:
    """A whole run: model, data, and the stages of its pipeline."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    pipeline: tuple[str, ...] = ("supernet", "bn_recalibration", "evaluate")
    """Stages this recipe runs, in order (`--stages NAME ...` runs a selection of them)."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast precision of the forward passes; BN statistics and master weights stay fp32."""
    seed: int = 0
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
