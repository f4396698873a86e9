"""`python -m dslim.export`: a run directory's subnet as a file that `load_subnet` rebuilds, equal to the supernet."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dslim
import dslim.data
from dslim.cli.export import main
from dslim.config import Config, ModelConfig
from dslim.evaluation.calibration import recalibrate
from dslim.io.artifacts import save_supernet
from dslim.models import from_config
from dslim.stages import stages_config
from dslim.stages.evaluate import EvalConfig

ROOT = Path(__file__).resolve().parent.parent


def make_run(
    path: Path, bn: str = "switchable", stage: str = "supernet", seed: int = 0, model: ModelConfig | None = None
) -> tuple[Path, object]:
    """A run directory as dslim.train leaves it: config.json and one stage artifact of a 10-class, 32px net
    (a MobileNet v1 with `bn` BatchNorm unless `model` says otherwise).

    Weights and statistics are random but not default, so a wrong slice or wrong statistics shows.
    """
    if model is None:
        widths, width_range = ((0.25, 0.5), (0.25, 0.5)) if bn == "calibrated" else ((0.25, 0.5, 1.0), None)
        model = ModelConfig(arch="mobilenet_v1", num_classes=10, input_size=32, max_width=max(widths), widths=widths,
                            width_range=width_range, bn=bn)  # fmt: skip
    config = Config(model=model, stages=stages_config(evaluate=EvalConfig(calibrate_batches=2)))
    net = from_config(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + (1.0 if p.dim() == 1 else 0.0))
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"config": dataclasses.asdict(config), "argv": ["--recipe", "test"], "versions": {"dslim": "test"}}
    (path / "config.json").write_text(json.dumps(cfg))
    net.router_trained = stage == "gate"  # what the gate stage records
    save_supernet(net, path / stage / "model.safetensors", stage=stage)
    return path, net.eval()


def fake_loader(monkeypatch, batches_by_split: dict) -> list:
    """Route `dslim.data.build_loader` to in-memory batches; returns the calls made."""
    calls = []

    def build_loader(cfg, split, image_size, **kw):
        calls.append((split, image_size, kw))
        return list(batches_by_split[split])

    monkeypatch.setattr(dslim.data, "build_loader", build_loader)
    return calls


def batches(n: int, seed: int, size: int = 32, batch: int = 6) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, size, size, generator=g), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(n)]  # fmt: skip


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", *args], env=env, capture_output=True, text=True, timeout=120)


def test_exported_subnet_equals_the_supernet(tmp_path):
    run, net = make_run(tmp_path / "run")
    out = tmp_path / "mbv1_half.safetensors"
    proc = cli("dslim.export", "--run", str(run), "--subnet", "0.5", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "0.5" in proc.stdout and str(out) in proc.stdout
    model = dslim.load_subnet(out)
    assert model.input_size == 32
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad(), net.using(net.resolve("0.5")):
        expected = net(x)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    assert model.stem[0].weight.shape == (16, 3, 3, 3)  # physically sliced


@pytest.mark.parametrize(
    "args, message",
    [
        (["--run", "{tmp}/nowhere", "--subnet", "0.5", "--out", "{tmp}/a.safetensors"], "does not exist"),
        (["--run", "{run}", "--subnet", "0.3", "--out", "{tmp}/a.safetensors"], "0.3"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(tmp_path, args, message):
    run, _ = make_run(tmp_path / "run")
    proc = cli("dslim.export", *(a.format(tmp=tmp_path, run=run) for a in args))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dslim: error:") and message in lines[0], proc.stderr
    assert not (tmp_path / "a.safetensors").exists()


def test_more_bad_inputs(tmp_path, capsys):
    run, _ = make_run(tmp_path / "run")
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "nostage").mkdir()
    (tmp_path / "nostage" / "config.json").write_text((run / "config.json").read_text())
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    for bad, message in [
        (["--run", str(empty)], "config.json is missing"),
        (["--run", str(tmp_path / "nostage")], "no finished stage"),
        (["--run", str(tmp_path / "broken")], "not readable JSON"),
        (["--run", str(run), "--out", str(tmp_path / "a.pt")], ".safetensors"),
    ]:
        argv = ["--subnet", "0.5", "--out", str(tmp_path / "a.safetensors"), *bad]
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


def test_any_width_of_a_calibrated_net_is_calibrated_then_exported(tmp_path, monkeypatch):
    """US-Net: one checkpoint without statistics for 0.42 still exports 0.42, calibrated on training batches."""
    run, net = make_run(tmp_path / "run", bn="calibrated")
    train = batches(3, seed=1)
    calls = fake_loader(monkeypatch, {"train": train})
    out = tmp_path / "w042.safetensors"
    main(["--run", str(run), "--subnet", "0.42", "--out", str(out)])
    assert [c[0] for c in calls] == ["train"] and calls[0][1] == 32
    subnet = net.resolve("0.42")
    recalibrate(net, {"0.42": subnet}, train, num_batches=2)  # the run's stages.evaluate.calibrate_batches
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad(), net.using(subnet):
        expected = net(x)
    torch.testing.assert_close(dslim.load_subnet(out)(x), expected, rtol=1e-5, atol=1e-5)
