"""Each ImageNet/CIFAR recipe against a table transcribed from its original's released configs, README commands and
code defaults (docs/recipes.md maps every setting, with the reasons for the deliberate differences). A change to a
recipe or to a default that moves a setting away from the original fails here. No training: configs only.

Sources (commits as in docs/recipes.md):
  DSN  changlin31/DS-Net@15cd303          TIMM huggingface/pytorch-image-models@6504a42 (timm 0.3.2)
  SN   JiahuiYu/slimmable_networks@5dc14d0 MMR  open-mmlab/mmrazor@892af92 (0.x)
  DMCP Zx55/dmcp@2076f03                   BD   Tushar-N/blockdrop@ec52b36
  PK   felixgwu/img_classification_pk_pytorch@298758d
"""

from __future__ import annotations

import math

import pytest

from dslim.recipes import load

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
UNIFORM = tuple(f"uniform-{r}" for r in range(14))

# -- DS-Net --------------------------------------------------------------------------------------------------------
DSNET_MBV1 = {
    "model.arch": "ds_mobilenet_v1",  # DSN configs/mobilenetv1_bn_uniform.yml#L2 model: slimmable_mbnet_v1_bn_uniform
    "model.dropout": 0.2,  # DSN ...uniform.yml#L11 drop: 0.2; dyn_slim_net.py#L194 (largest only)
    "model.bn": "private",  # DSN dyn_slim_ops.py#L143 DSBatchNorm2d: statistics per choice, one affine
    "model.gate_routes": 4,  # DSN ...uniform_gate.yml#L3 num_choice: 4
    "data.batch_size": 64,  # DSN ...uniform.yml#L15 batch_size: 64 (per GPU)
    "data.random_area": (0.08, 1.0),  # TIMM transforms_factory.py#L69 default scale
    "data.random_aspect_ratio": (3 / 4, 4 / 3),  # TIMM transforms_factory.py#L70 default ratio
    "data.flip": True,  # TIMM transforms_factory.py#L73 hflip 0.5
    "data.interpolation": "random",  # DSN train.py#L147 --train-interpolation default 'random'
    "data.randaugment.layers": 2,  # DSN ...uniform.yml#L18 aa: rand-m9-mstd0.5; TIMM auto_augment.py#L651 n=2
    "data.randaugment.magnitude": 9.0,  # m9
    "data.randaugment.magnitude_std": 0.5,  # mstd0.5
    "data.randaugment.prob": 0.5,  # TIMM auto_augment.py#L613 prob=0.5
    "data.color_jitter": (
        0.0,
        0.0,
        0.0,
        0.0,
    ),  # ...uniform.yml#L23 0.06, inactive with aa (TIMM transforms_factory.py#L79-L98)
    "data.lighting": 0.0,
    "data.erasing.prob": 0.2,  # DSN ...uniform.yml#L20 reprob: 0.2
    "data.erasing.mode": "pixel",  # DSN ...uniform.yml#L19 remode: pixel
    "data.erasing.count": 1,  # DSN train.py#L141 --recount 1
    "data.erasing.area": (0.02, 1 / 3),  # TIMM random_erasing.py#L47 min_area, max_area
    "data.erasing.min_aspect": 0.3,  # TIMM random_erasing.py#L47 min_aspect
    "data.mean": IMAGENET_MEAN,  # DSN dyn_slim_net.py#L23
    "data.std": IMAGENET_STD,
    "data.crop_fraction": 0.875,  # DSN dyn_slim_net.py#L22 crop_pct
    "data.eval_interpolation": "bicubic",  # DSN dyn_slim_net.py#L22 interpolation
    "mixed_precision": "no",  # DSN ...uniform.yml#L24 amp: false
    # stage I
    "stages.supernet.epochs": 150 + 10,  # DSN ...uniform.yml#L8 epochs: 150; train.py#L126 cooldown 10
    "stages.supernet.global_batch": 8 * 64,  # DSN README.md#L45 --nproc_per_node=8
    "stages.supernet.optim.name": "sgd",  # DSN ...uniform.yml#L6 opt: sgd
    "stages.supernet.optim.nesterov": True,  # TIMM optim_factory.py#L63-L65 'sgd' is Nesterov
    "stages.supernet.optim.momentum": 0.9,  # DSN train.py#L103
    "stages.supernet.optim.lr": 0.08,  # DSN ...uniform.yml#L14 lr: 0.08
    "stages.supernet.optim.lr_batch": 8 * 64,
    "stages.supernet.optim.weight_decay": 1e-4,  # DSN ...uniform.yml#L10
    "stages.supernet.optim.decay_norm_and_bias": False,  # TIMM optim_factory.py#L31 1-D and .bias
    "stages.supernet.optim.decay_depthwise": True,
    "stages.supernet.schedule.kind": "cosine",  # DSN ...uniform.yml#L7 sched: cosine
    "stages.supernet.schedule.warmup_epochs": 5.0,  # DSN ...uniform.yml#L26
    "stages.supernet.schedule.warmup_lr": 1e-5,  # DSN ...uniform.yml#L9
    "stages.supernet.schedule.min_lr": 1e-5,  # DSN train.py#L114
    "stages.supernet.schedule.cooldown_epochs": 10,  # DSN train.py#L126
    "stages.supernet.schedule.per_epoch": True,  # TIMM scheduler_factory.py#L35 t_in_epochs=True
    "stages.supernet.schedule.warmup_prefix": False,  # TIMM cosine_lr.py#L72 warmup_prefix default False
    "stages.supernet.ema_decay": 0.997,  # DSN ...uniform.yml#L12-L13
    "stages.supernet.rule": "sandwich",  # DSN train_slim.py#L53 largest, uniform, uniform, smallest
    "stages.supernet.num_random": 2,
    "stages.supernet.random_subnets": tuple(
        f"uniform-{r}" for r in range(1, 14)
    ),  # DSN dyn_slim_net.py#L131 randint(1, 13)
    "stages.supernet.distill": "ieb",  # DSN ...uniform.yml#L37 inplace_bootstrap: true
    "stages.supernet.ensemble_ib": False,  # DSN ...uniform.yml#L38
    "stages.supernet.label_smoothing": 0.1,  # DSN ...uniform.yml#L21 smoothing: 0.1
    "stages.supernet.eval_subnets": ("smallest", "largest"),  # DSN train.py#L541
    # BN reset
    "stages.bn_recalibration.subnets": UNIFORM,  # DSN ..._reset_bn.yml#L3 num_choice 14; train.py#L602
    "stages.bn_recalibration.batches": 1001,  # DSN train.py#L610-L611: breaks after batch index 1000
    "stages.bn_recalibration.batch_size": 4 * 64,  # DSN train.py#L429 validation_batch_size_multiplier * batch_size
    "stages.bn_recalibration.momentum": None,  # deliberate: cumulative (original 0.1, dyn_slim_ops.py#L147)
    # stage II
    "stages.gate.epochs": 30 + 10,  # DSN ..._gate.yml#L8; train.py#L126
    "stages.gate.global_batch": 8 * 64,  # DSN ..._gate.yml#L15; README.md#L58
    "stages.gate.optim.lr": 0.08,  # DSN ..._gate.yml#L14
    "stages.gate.optim.lr_batch": 8 * 64,
    "stages.gate.optim.weight_decay": 0.01,  # DSN ..._gate.yml#L10
    "stages.gate.optim.nesterov": True,
    "stages.gate.schedule.kind": "cosine",  # DSN ..._gate.yml#L7
    "stages.gate.schedule.warmup_epochs": 0.0,  # DSN ..._gate.yml#L26
    "stages.gate.schedule.min_lr": 1e-5,  # DSN train.py#L114
    "stages.gate.schedule.cooldown_epochs": 10,  # DSN train.py#L126
    "stages.gate.schedule.per_epoch": True,
    "stages.gate.schedule.warmup_prefix": False,
    "stages.gate.ema_decay": 0.997,  # DSN ..._gate.yml#L12-L13
    "stages.gate.ema_artifact": True,  # DSN train.py#L626-L633 the EMA's results are reported
    "stages.gate.label_smoothing": 0.1,  # DSN ..._gate.yml#L21
    "stages.gate.sgs_label_smoothing": 0.1,  # DSN train_slim_gate.py#L98 loss_fn is the smoothed loss
    "stages.gate.sgs_weight": 1.0,  # DSN train_slim_gate.py#L116
    "stages.gate.macs_weight": 0.5,  # DSN train_slim_gate.py#L116 0.5 * flops_loss
    "stages.gate.macs_unit": 1e9,  # DSN train_slim_gate.py#L111 (flops / 1e9) ** 2
    "stages.gate.gumbel_tau": 1.0,  # DSN dyn_slim_blocks.py#L335
    "stages.evaluate.subnets": ("largest", *UNIFORM),  # DSN README.md#L22-L26 the 14 subnets
}

# -- S-Net ----------------------------------------------------------------------------------------------------------
SNET_MBV1 = {
    "model.arch": "mobilenet_v1",  # SN apps/s_mobilenet_v1_train_val.yml#L51
    "model.widths": (0.25, 0.5, 0.75, 1.0),  # #L53
    "model.bn": "switchable",  # SN models/slimmable_ops.py#L7
    "data.batch_size": 160 // 4,  # #L54 num_gpus_per_job: 4, #L60 batch_size: 160 (global, train.py#L150-L157)
    "data.random_area": (0.25, 1.0),  # #L55 imagenet1k_mobile; SN train.py#L62
    "data.color_jitter": (0.4, 0.4, 0.4, 0.0),  # SN train.py#L63,L67-L69
    "data.lighting": 0.0,  # deliberate: SN train.py#L70 Lighting(0.1) is, in effect, off on uint8 pixels
    "data.interpolation": "bilinear",  # torchvision RandomResizedCrop default
    "data.crop_fraction": 0.875,  # SN train.py#L76-L77 Resize(256), CenterCrop(224)
    "data.eval_interpolation": "bilinear",
    "data.mean": IMAGENET_MEAN,  # SN train.py#L60-L61
    "stages.supernet.global_batch": 160,
    "stages.supernet.epochs": 480,  # #L59
    "stages.supernet.rule": "all_widths",  # SN train.py#L476-L497
    "stages.supernet.distill": "none",  # inplace_distill unset
    "stages.supernet.label_smoothing": 0.0,  # SN train.py#L629-L632, label_smoothing unset
    "stages.supernet.optim.lr": 0.045,  # #L56
    "stages.supernet.optim.lr_batch": 160,
    "stages.supernet.optim.nesterov": True,  # #L25
    "stages.supernet.optim.momentum": 0.9,  # #L23
    "stages.supernet.optim.weight_decay": 1e-4,  # #L24
    "stages.supernet.optim.decay_depthwise": False,  # SN train.py#L252-L266
    "stages.supernet.optim.decay_norm_and_bias": False,
    "stages.supernet.schedule.kind": "exp",  # #L57 exp_decaying
    "stages.supernet.schedule.gamma": 0.98,  # #L58
    "stages.supernet.schedule.per_epoch": True,  # SN train.py#L725 lr_scheduler.step() per epoch
    "pipeline": ("supernet", "evaluate"),
}
SNET_MBV2 = {
    **SNET_MBV1,
    "model.arch": "mobilenet_v2",  # SN apps/s_mobilenet_v2_train_val.yml#L51
    "model.widths": (0.35, 0.5, 0.75, 1.0),  # #L53
}
SNET_RESNET50 = {
    **SNET_MBV1,
    "model.arch": "resnet50",  # SN apps/s_resnet50_train_val.yml#L51-L52
    "model.widths": (0.25, 0.5, 0.75, 1.0),  # #L54
    "data.batch_size": 256 // 4,  # #L43 batch_size: 256, #L55 4 GPUs
    "data.random_area": (0.08, 1.0),  # #L10 imagenet1k_basic; SN train.py#L56
    "stages.supernet.global_batch": 256,
    "stages.supernet.epochs": 100,  # #L19
    "stages.supernet.optim.lr": 0.1,  # #L28
    "stages.supernet.optim.lr_batch": 256,
    "stages.supernet.schedule.kind": "step",  # #L29 multistep
    "stages.supernet.schedule.milestones": (30, 60, 90),  # #L30
    "stages.supernet.schedule.gamma": 0.1,  # #L31
}

# -- US-Net ---------------------------------------------------------------------------------------------------------
USNET_MBV1 = {
    "model.arch": "mobilenet_v1",  # SN apps/us_mobilenet_v1_train_val.yml#L57
    "model.width_range": (0.25, 1.0),  # #L63
    "model.widths": tuple(round(0.25 + 0.025 * i, 3) for i in range(31)),  # #L60
    "model.bn": "calibrated",
    "data.batch_size": 1024 // 8,  # #L65-L66
    "data.random_area": (0.25, 1.0),  # #L64 imagenet1k_mobile
    "data.color_jitter": (0.4, 0.4, 0.4, 0.0),  # SN train.py#L63
    "data.lighting": 0.0,  # deliberate, as S-Net
    "stages.supernet.global_batch": 1024,
    "stages.supernet.epochs": 250,  # #L69
    "stages.supernet.rule": "sandwich",  # #L54; SN train.py#L431-L437
    "stages.supernet.num_random": 4 - 2,  # #L53 num_sample_training: 4
    "stages.supernet.distill": "inplace",  # deliberate: #L55 soft_target (never read; the paper's method)
    "stages.supernet.label_smoothing": 0.0,  # SN train.py#L629-L632
    "stages.supernet.optim.lr": 0.5,  # #L67
    "stages.supernet.optim.lr_batch": 1024,
    "stages.supernet.optim.nesterov": True,
    "stages.supernet.optim.weight_decay": 1e-4,
    "stages.supernet.optim.decay_depthwise": False,  # SN train.py#L252-L266
    "stages.supernet.schedule.kind": "linear",  # #L68 linear_decaying
    "stages.supernet.schedule.min_lr": 0.0,
    "stages.supernet.schedule.per_epoch": False,  # SN train.py#L347-L350 per iteration
    "stages.bn_recalibration.batches": 5,  # #L50 bn_cal_batch_num: 5
    "stages.bn_recalibration.momentum": None,  # #L52 cumulative_bn_stats: true
    "pipeline": ("supernet", "bn_recalibration", "evaluate"),
}
USNET_MBV2 = {
    **USNET_MBV1,
    "model.arch": "mobilenet_v2",  # SN apps/us_mobilenet_v2_train_val.yml#L58
    "model.width_range": (0.35, 1.0),  # #L64
    "model.widths": tuple(round(0.35 + 0.025 * i, 3) for i in range(27)),  # #L61
}

# -- AutoSlim -------------------------------------------------------------------------------------------------------
AUTOSLIM_MBV2 = {
    "model.arch": "mobilenet_v2",  # MMR autoslim_mbv2_supernet_8xb256_in1k.py#L9
    "model.max_width": 1.5,  # widen_factor=1.5
    "model.channel_bins": 12,  # MMR ...supernet...#L43-L44 ratios i/12
    "model.min_bin": 2,  # 2/12
    "model.bn": "calibrated",  # deliberate (mmrazor evaluates with batch statistics)
    "data.batch_size": 256,  # MMR imagenet_bs256_autoslim.py#L28 samples_per_gpu
    "data.random_area": (0.25, 1.0),  # MMR imagenet_bs256_autoslim.py#L10
    "data.color_jitter": (0.4, 0.4, 0.4, 0.0),  # MMR imagenet_bs256_autoslim.py#L12
    "data.holdout": 5000,  # deliberate: mmrazor searched the validation set
    "stages.supernet.global_batch": 8 * 256,
    "stages.supernet.epochs": 50,  # MMR ...supernet...#L49
    "stages.supernet.rule": "sandwich",
    "stages.supernet.num_random": 4 - 2,  # MMR algorithms/autoslim.py#L37 num_sample_training=4
    "stages.supernet.sampler": "groups",
    "stages.supernet.distill": "inplace",  # MMR ...supernet...#L26-L40 KLDivergence tau 1
    "stages.supernet.label_smoothing": 0.1,  # MMR ...supernet...#L15-L19
    "stages.supernet.optim.lr": 0.5,  # MMR imagenet_bs2048_autoslim.py#L6
    "stages.supernet.optim.lr_batch": 2048,
    "stages.supernet.optim.nesterov": True,  # #L8
    "stages.supernet.optim.momentum": 0.9,  # #L7
    "stages.supernet.optim.weight_decay": 1e-4,  # #L9
    "stages.supernet.optim.decay_depthwise": False,  # #L2-L3 dwconv_decay_mult=0
    "stages.supernet.optim.decay_norm_and_bias": False,  # bias_decay_mult=0, norm_decay_mult=0
    "stages.supernet.schedule.kind": "linear",  # #L15 poly power 1
    "stages.supernet.schedule.min_lr": 0.0,
    "stages.supernet.schedule.per_epoch": False,  # by_epoch=False
    "stages.search.targets": (500e6, 300e6, 200e6),  # MMR autoslim_mbv2_search_8xb1024_in1k.py#L9
    "stages.search.bn": "batch",  # MMR ...supernet...#L46 bn_training_mode=True
    "stages.search.batch_size": 1024,  # MMR ...search...#L13 samples_per_gpu=1024
    "stages.retrain.epochs": 300,  # MMR autoslim_mbv2_subnet_8xb256_in1k.py#L27
    "stages.retrain.global_batch": 8 * 256,
    "stages.retrain.label_smoothing": 0.1,  # MMR ...subnet...#L5-L11
    "stages.retrain.distill": "none",  # MMR ...subnet...#L22 distiller=None
    "stages.retrain.bn": "switchable",  # MMR algorithms/autoslim.py#L90-L94
    "stages.retrain.optim.lr": 0.5,
    "stages.retrain.optim.lr_batch": 2048,
    "stages.retrain.optim.decay_depthwise": False,
    "stages.retrain.schedule.kind": "linear",
    "pipeline": ("supernet", "search", "retrain", "evaluate", "export"),
}
AUTOSLIM_MBV1 = {
    **AUTOSLIM_MBV2,
    "model.arch": "mobilenet_v1",  # SN apps/autoslim_mobilenet_v1_train_val.yml#L56
    "stages.search.targets": (570e6, 325e6, 150e6),  # SN apps/autoslim_mobilenet_v1_train_val.yml#L59-L61
}
AUTOSLIM_RESNET50 = {
    **AUTOSLIM_MBV2,
    "model.arch": "resnet50",  # SN apps/autoslim_resnet_train_val.yml#L56-L57
    "model.max_width": 1.0,
    "data.batch_size": 256 // 4,  # SN ...resnet...#L43 batch_size: 256, #L3 4 GPUs (basic settings)
    "stages.search.targets": (3.0e9, 2.0e9, 1.0e9, 570e6),  # SN ...resnet...#L60-L63
    "stages.supernet.global_batch": 256,  # dslim's choice (no released supernet config)
    "stages.supernet.optim.lr": 0.1,
    "stages.supernet.optim.lr_batch": 256,
    "stages.retrain.global_batch": 256,  # SN ...resnet...#L43
    "stages.retrain.epochs": 100,  # SN ...resnet...#L19
    "stages.retrain.optim.lr": 0.1,  # SN ...resnet...#L28
    "stages.retrain.optim.lr_batch": 256,
    "stages.retrain.schedule.kind": "step",  # SN ...resnet...#L29-L31 multistep
    "stages.retrain.schedule.milestones": (30, 60, 90),
    "stages.retrain.schedule.per_epoch": True,
}

# -- DMCP -----------------------------------------------------------------------------------------------------------
STEPS = 1_281_167 // 512  # iterations of an ImageNet epoch at 8 x 64 (the original's GPU count is not released)
DMCP_MBV2 = {
    "model.arch": "mobilenet_v2",  # DMCP config/mbv2/dmcp.yaml#L38
    "model.max_width": 1.5,  # #L5
    "model.prune_head": True,  # DMCP models/dmcp/dmcp_mobilenet.py DMCPMobileNetV2.alpha_last: its own chain
    "model.bn": "calibrated",
    "data.batch_size": 64,  # #L78
    "data.random_area": (0.08, 1.0),  # DMCP utils/data.py#L66 RandomResizedCrop defaults
    "data.color_jitter": (0.2, 0.2, 0.2, 0.1),  # #L76
    "data.crop_fraction": 224 / 256,  # #L75 test_resize: 256
    "stages.dmcp.epochs": 40,  # #L2
    "stages.dmcp.global_batch": 8 * 64,
    "stages.dmcp.min_width": 0.1,  # #L6
    "stages.dmcp.width_step": 0.1,  # #L7
    "stages.dmcp.warmup": 0.5,  # DMCP utils/tools.py#L125 start_train = max_iter // 2
    "stages.dmcp.label_smoothing": 0.1,  # #L9
    "stages.dmcp.flops_weight": 0.1,  # #L21
    "stages.dmcp.optim.lr": 0.5,  # #L63 warmup_lr (the peak)
    "stages.dmcp.optim.lr_batch": 8 * 64,
    "stages.dmcp.optim.nesterov": True,  # #L58
    "stages.dmcp.optim.momentum": 0.9,  # #L56
    "stages.dmcp.optim.weight_decay": 4e-5,  # #L57
    "stages.dmcp.optim.decay_norm_and_bias": False,  # #L59 no_wd; utils/tools.py#L131-L161
    "stages.dmcp.optim.decay_depthwise": True,
    "stages.dmcp.schedule.kind": "cosine",
    "stages.dmcp.schedule.warmup_epochs": 1000 / STEPS,  # #L64 warmup_steps: 1000
    "stages.dmcp.schedule.warmup_lr": 0.2,  # #L62 base_lr
    "stages.dmcp.schedule.min_lr": 0.08,  # #L65
    "stages.dmcp.schedule.per_epoch": False,  # DMCP utils/lr_scheduler.py#L7-L8 every step
    "stages.dmcp.schedule.warmup_prefix": True,  # DMCP utils/lr_scheduler.py#L61
    "stages.evaluate.calibrate_batches": 5,  # #L29,L35 num_batch: 5
    "stages.sample.count": 5,  # #L23 num_model_sample: 5
    "stages.retrain.epochs": 250,  # DMCP config/mbv2/retrain.yaml#L2
    "stages.retrain.global_batch": 8 * 64,
    "stages.retrain.label_smoothing": 0.1,  # retrain.yaml#L3
    "stages.retrain.subnets": ("dmcp-expected",),  # DMCP README.md#L44-L47 --chcfg .../expected_ch
    "stages.retrain.optim.lr": 0.8,  # retrain.yaml#L37
    "stages.retrain.optim.lr_batch": 8 * 64,
    "stages.retrain.optim.weight_decay": 4e-5,  # retrain.yaml#L31
    "stages.retrain.optim.decay_norm_and_bias": False,  # retrain.yaml#L33
    "stages.retrain.schedule.kind": "cosine",
    "stages.retrain.schedule.warmup_epochs": 1250 / STEPS,  # retrain.yaml#L38
    "stages.retrain.schedule.warmup_lr": 0.2,  # retrain.yaml#L36
    "stages.retrain.schedule.min_lr": 0.0,  # retrain.yaml#L39
    "pipeline": ("dmcp", "sample", "retrain", "evaluate", "export"),
}
DMCP_RESNET18 = {
    **{k: v for k, v in DMCP_MBV2.items() if k != "stages.dmcp.schedule.warmup_lr"},  # no warm-up
    "model.arch": "resnet18",  # DMCP config/res18/dmcp.yaml#L38
    "model.max_width": 1.0,  # #L5
    "model.prune_head": False,  # a ResNet's layers are all in chains already (the option is MobileNet v2's)
    "stages.dmcp.label_smoothing": 0.0,  # #L9 label_smooth: None
    "stages.dmcp.optim.weight_decay": 1e-4,  # #L57
    "stages.dmcp.schedule.warmup_epochs": 0.0,  # #L64 warmup_steps: 0
    "stages.retrain.epochs": 100,  # config/res18/retrain.yaml#L2
    "stages.retrain.optim.weight_decay": 1e-4,  # retrain.yaml#L31
}
DMCP_RESNET50 = {**DMCP_RESNET18, "model.arch": "resnet50"}  # DMCP config/res50/*.yaml: res18's values

# -- BlockDrop ------------------------------------------------------------------------------------------------------
CIFAR_MEAN, CIFAR_STD = (125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)
BLOCKDROP_R110_C10 = {
    "model.arch": "cifar_resnet110",  # BD utils.py#L182-L186 layer_config [18, 18, 18]
    "model.block_policy": True,
    "data.format": "cifar",
    "data.augment": "pad_crop",  # BD utils.py#L122-L126 RandomCrop(32, padding=4), flip
    "data.pad": 4,
    "data.flip": True,
    "data.crop_fraction": 1.0,  # BD utils.py#L128-L130 ToTensor only
    "data.mean": (0.0, 0.0, 0.0),  # BD utils.py#L105,L121-L130 R110: raw [0, 1] pixels
    "data.std": (1.0, 1.0, 1.0),
    # pretrain: PK (the repository BD Readme.md#L15 names; checkpoints pk_E_*.t7, BD utils.py#L177,L183)
    "stages.pretrain.epochs": 164,  # PK args.py#L96
    "stages.pretrain.global_batch": 64,  # PK args.py#L103
    "stages.pretrain.optim.lr": 0.1,  # PK args.py#L108
    "stages.pretrain.optim.lr_batch": 64,
    "stages.pretrain.optim.momentum": 0.9,  # PK args.py#L113
    "stages.pretrain.optim.nesterov": True,  # PK args.py#L115-L117
    "stages.pretrain.optim.weight_decay": 1e-4,  # PK args.py#L124
    "stages.pretrain.optim.decay_norm_and_bias": True,  # PK utils.py#L62-L64 model.parameters()
    "stages.pretrain.schedule.kind": "step",  # PK utils.py#L41-L50
    "stages.pretrain.schedule.milestones": (81, 122),  # 1-based epochs 82 and 123 (164 / 2, 164 * 3 / 4)
    "stages.pretrain.schedule.gamma": 0.1,  # PK args.py#L111
    "stages.pretrain.schedule.warmup_epochs": 0.0,
    "stages.pretrain.schedule.per_epoch": True,
    # policy: BD cl_training.py with Readme.md#L34
    "stages.policy.epochs": 5300 + 1,  # BD Readme.md#L47 fine-tunes ckpt_E_5300
    "stages.policy.global_batch": 2048,  # BD Readme.md#L34 --batch_size 2048
    "stages.policy.optim.name": "adam",  # BD cl_training.py#L208
    "stages.policy.optim.lr": 1e-3,  # BD Readme.md#L34 --lr 1e-3
    "stages.policy.optim.lr_batch": 2048,
    "stages.policy.optim.weight_decay": 0.0,  # BD cl_training.py#L23
    "stages.policy.schedule.kind": "constant",  # BD cl_training.py#L29 epoch_step 10000
    "stages.policy.penalty": -1.0,  # BD cl_training.py#L35
    "stages.policy.alpha": 0.8,  # BD cl_training.py#L36
    "stages.policy.entropy_weight": 0.1,  # BD cl_training.py#L22
    "stages.policy.curriculum_blocks": 1,  # BD cl_training.py#L216
    # finetune: BD finetune.py with Readme.md#L47
    "stages.finetune.epochs": 2000 + 1,  # BD Readme.md#L47 --max_epochs 2000; finetune.py#L200
    "stages.finetune.global_batch": 256,  # BD Readme.md#L47 --batch_size 256
    "stages.finetune.optim.name": "adam",  # BD finetune.py#L196
    "stages.finetune.optim.lr": 1e-4,  # BD Readme.md#L47 --lr 1e-4
    "stages.finetune.optim.lr_batch": 256,
    "stages.finetune.optim.weight_decay": 0.0,  # BD finetune.py#L22
    "stages.finetune.policy_optim.name": "adam",
    "stages.finetune.policy_optim.lr": 1e-4,
    "stages.finetune.policy_optim.lr_batch": 256,
    "stages.finetune.schedule.kind": "step",  # BD finetune.py#L29-L31 x0.1 every 1600 epochs
    "stages.finetune.schedule.milestones": (1600,),
    "stages.finetune.schedule.per_epoch": True,
    "stages.finetune.policy_schedule.milestones": (1600,),
    "stages.finetune.penalty": -10.0,  # BD Readme.md#L47 --penalty -10
    "stages.finetune.alpha": 0.8,  # BD finetune.py#L35
    "pipeline": ("pretrain", "policy", "finetune", "evaluate", "export"),
}
BLOCKDROP_R32_C10 = {
    **BLOCKDROP_R110_C10,
    "model.arch": "cifar_resnet32",  # BD utils.py#L176-L180 layer_config [5, 5, 5]
    "data.mean": CIFAR_MEAN,  # BD utils.py#L105-L108 only R32 subtracts the mean
    "data.std": CIFAR_STD,
    "stages.policy.epochs": 5000 + 1,  # no R32 command: the C10 command's --max_epochs 5000 (BD Readme.md#L34)
}
BLOCKDROP_R101_IMAGENET = {
    "model.arch": "resnet101",  # BD utils.py#L200-L204 layer_config [3, 4, 23, 3]
    "model.block_policy": True,
    "data.augment": "resize_crop",  # BD utils.py#L135-L141 Scale(256), RandomCrop(224), flip
    "data.crop_fraction": 224 / 256,
    "data.flip": True,
    "data.mean": IMAGENET_MEAN,  # BD utils.py#L133-L134
    "data.std": IMAGENET_STD,
    "stages.policy.epochs": 4 + 1,  # BD Readme.md#L50 fine-tunes the curriculum's ckpt_E_4
    "stages.policy.global_batch": 2048,  # BD Readme.md#L37
    "stages.policy.optim.lr": 1e-3,
    "stages.policy.optim.lr_batch": 2048,
    "stages.policy.penalty": -1.0,
    "stages.policy.curriculum_blocks": 1,
    "stages.finetune.epochs": 10 + 1,  # BD Readme.md#L50 --max_epochs 10
    "stages.finetune.global_batch": 320,  # BD Readme.md#L50 --batch_size 320
    "stages.finetune.optim.lr": 1e-4,  # BD Readme.md#L50 --lr 1e-4
    "stages.finetune.optim.lr_batch": 320,
    "stages.finetune.policy_optim.lr": 1e-4,
    "stages.finetune.policy_optim.lr_batch": 320,
    "stages.finetune.penalty": -5.0,  # BD Readme.md#L50 --penalty -5
    "stages.finetune.alpha": 0.8,
}

TABLES = {
    "dsnet_mbv1": DSNET_MBV1,
    "snet_mbv1": SNET_MBV1,
    "snet_mbv2": SNET_MBV2,
    "snet_resnet50": SNET_RESNET50,
    "usnet_mbv1": USNET_MBV1,
    "usnet_mbv2": USNET_MBV2,
    "autoslim_mbv1": AUTOSLIM_MBV1,
    "autoslim_mbv2": AUTOSLIM_MBV2,
    "autoslim_resnet50": AUTOSLIM_RESNET50,
    "dmcp_mbv2": DMCP_MBV2,
    "dmcp_resnet18": DMCP_RESNET18,
    "dmcp_resnet50": DMCP_RESNET50,
    "blockdrop_r110_c10": BLOCKDROP_R110_C10,
    "blockdrop_r32_c10": BLOCKDROP_R32_C10,
    "blockdrop_r101_imagenet": BLOCKDROP_R101_IMAGENET,
}


def resolved(config: object, path: str) -> object:
    for part in path.split("."):
        config = getattr(config, part)
    return config


def same(got: object, want: object) -> bool:
    if isinstance(want, tuple):
        return isinstance(got, tuple) and len(got) == len(want) and all(same(g, w) for g, w in zip(got, want))
    if isinstance(want, float) and not isinstance(want, bool):
        return isinstance(got, (int, float)) and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)
    return type(got) is type(want) and got == want


@pytest.mark.parametrize("recipe", sorted(TABLES))
def test_recipe_matches_the_original(recipe: str) -> None:
    config = load(recipe)
    wrong = [f"{path}: {resolved(config, path)!r} != {want!r}" for path, want in TABLES[recipe].items()
             if not same(resolved(config, path), want)]  # fmt: skip
    assert not wrong, "\n".join(wrong)


def test_every_imagenet_and_cifar_recipe_has_a_table() -> None:
    from dslim.recipes import names

    assert {n for n in names() if not n.endswith(("_digits", "_hard"))} == set(TABLES)
