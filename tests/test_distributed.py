"""Two CPU processes (DDP over gloo, and DeepSpeed ZeRO-2) train to the same weights as one process.

The one-process reference accumulates two micro-batches per step; each of the two processes takes one of them.
BatchNorm then sees the same images in each pass either way, so the weights must agree to rounding. Two steps
only, at a small learning rate: a tiny MobileNet on noise has BatchNorm channels of almost no variance, which
amplify any rounding difference exponentially over steps. Run as a script, this file is the worker `torchrun` starts.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

GLOBAL_BATCH, STEPS = 16, 2
VARIANTS = {
    # US-Net: calibrated BN, sandwich of random widths, in-place distillation, no clipping
    "us": dict(bn="calibrated", rule="sandwich", distill="inplace", grad_clip=0.0),
    # S-Net: switchable BN (each width's affine is unused by the other passes), every width on the labels, clipping
    "s": dict(bn="switchable", rule="all_widths", distill="none", grad_clip=0.5),
    # two optimizers, alternating every step: the weights (DDP / DeepSpeed) and a second set the loop reduces itself
    "two": dict(bn="calibrated", rule="sandwich", distill="inplace", grad_clip=0.0),
}


def two_optimizer_method(cfg):  # type: ignore[no-untyped-def]
    """Sandwich steps of the weights, then a step of a logit calibrator on the weights just updated."""
    import torch.nn.functional as F

    from dslim.config import OptimConfig, ScheduleConfig
    from dslim.methods.sandwich import Sandwich
    from dslim.training import ParamSet, Update

    class TwoSets(Sandwich):
        def param_sets(self, net):  # type: ignore[no-untyped-def]
            weights = [p for n, p in net.named_parameters() if not n.startswith("calibrator.")]
            # SGD here: Adam's normalized steps would amplify rounding differences of near-zero gradients
            arch = OptimConfig(lr=0.05, lr_batch=GLOBAL_BATCH, weight_decay=1e-2, grad_clip=0.5)
            calibrator = list(net.calibrator.parameters())
            return {
                "weights": ParamSet(weights, cfg.optim, cfg.schedule),
                "arch": ParamSet(calibrator, arch, ScheduleConfig(kind="constant")),
            }

        def updates(self, where, sets):  # type: ignore[no-untyped-def]
            return [Update(("weights",), self.step), Update(("arch",), self.arch_pass)]

        def arch_pass(self, model, batch, ctx):  # type: ignore[no-untyped-def]
            images, labels = batch
            with ctx.backward_pass(last=True), ctx.supernet.using(ctx.supernet.smallest()):
                loss = F.cross_entropy(ctx.supernet.calibrator(model(images)), labels)
                ctx.backward(loss)
            return {"loss/arch": loss.detach()}

    return TwoSets(cfg)


def worker(out: str, accum: int, variant: str) -> None:
    from dslim.config import OptimConfig
    from dslim.methods.sandwich import Sandwich, SandwichConfig
    from dslim.models import create_supernet
    from dslim.training import MetricsLog, Trainer, make_accelerator

    v = VARIANTS[variant]
    acc = make_accelerator("no")
    torch.manual_seed(0)
    width_range = (0.25, 0.5) if v["bn"] == "calibrated" else None
    net = create_supernet("mobilenet_v1", num_classes=10, max_width=0.5, widths=(0.25, 0.375, 0.5),
                          width_range=width_range, bn=v["bn"])  # fmt: skip
    optim = OptimConfig(lr=0.005, lr_batch=GLOBAL_BATCH, weight_decay=1e-3, grad_clip=v["grad_clip"])
    cfg = SandwichConfig(epochs=1, rule=v["rule"], distill=v["distill"], grad_accum=accum, num_random=1, optim=optim)
    per = GLOBAL_BATCH // (acc.num_processes * accum)
    g = torch.Generator().manual_seed(1)
    steps = [(torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g), torch.randint(0, 10, (GLOBAL_BATCH,), generator=g))
             for _ in range(STEPS)]  # fmt: skip
    mine = [(x[k * per : (k + 1) * per], y[k * per : (k + 1) * per])
            for x, y in steps for k in range(acc.process_index * accum, (acc.process_index + 1) * accum)]  # fmt: skip
    method = Sandwich(cfg)
    if variant == "two":
        net.calibrator = torch.nn.Linear(10, 10)
        method = two_optimizer_method(cfg)
    trainer = Trainer(acc, net, method, cfg, stage="supernet", state_dir=f"{out}.state",
                      metrics=MetricsLog(f"{out}.jsonl", acc), batch_size=per)  # fmt: skip
    trainer.fit(lambda epoch: mine)
    Path(f"{out}.rank{acc.process_index}").write_text(
        json.dumps({"processes": acc.num_processes, "type": str(acc.distributed_type)})
    )
    if acc.is_main_process:
        save_file({k: v.contiguous() for k, v in trainer.supernet.state_dict().items()}, out)


def launch(tmp_path: Path, name: str, processes: int, variant: str, **env: str) -> dict[str, torch.Tensor]:
    out = str(tmp_path / f"{name}.safetensors")
    accum = 2 // processes
    args = [__file__, out, str(accum), variant]
    if processes > 1:
        args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *args]
    path = os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])
    full_env = {**os.environ, "PYTHONPATH": path, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", **env}
    done = subprocess.run([sys.executable, *args], env=full_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads(Path(f"{out}.rank{i}").read_text()) for i in range(processes)]
    assert all(r["processes"] == processes for r in ranks), ranks  # not silently one process per rank
    return load_file(out)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    params = [k for k in a if a[k].dtype.is_floating_point and "running_" not in k]
    for k in params:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4, msg=k)
    if "calibrator.weight" in a:  # the second set trained, in both runs alike
        assert not torch.allclose(a["calibrator.weight"], torch.nn.Linear(10, 10).weight)


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_ddp_two_processes_match_one(tmp_path, variant):
    one = launch(tmp_path, "one", 1, variant)
    two = launch(tmp_path, "two", 2, variant)
    assert_same_weights(one, two)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["us", "two"])
def test_deepspeed_zero2_two_processes_match_one(tmp_path, variant):
    pytest.importorskip("deepspeed")
    pytest.importorskip("transformers")  # Accelerate's DeepSpeed path checks its version
    one = launch(tmp_path, "one", 1, variant)
    # Not ACCELERATE_USE_CPU here: with it Accelerate silently drops DeepSpeed (dslim's make_accelerator sets up gloo).
    deepspeed = {
        "ACCELERATE_USE_CPU": "false",
        "ACCELERATE_USE_DEEPSPEED": "true",
        "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
    }
    ds = launch(tmp_path, "ds", 2, variant, **deepspeed)
    assert "DEEPSPEED" in json.loads((tmp_path / "ds.safetensors.rank1").read_text())["type"]
    assert_same_weights(one, ds)


if __name__ == "__main__":
    worker(sys.argv[1], int(sys.argv[2]), sys.argv[3])
