"""Bad input through the real command line: exit code 2, one line on stderr naming the option or file, no traceback,
and nothing written where the run would have written. Files from elsewhere are checked before anything is built."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PYTHON, subprocess_env
from safetensors.torch import save_file

import dslim
from dslim.errors import UserError


def run(*args: str, cwd: Path | None = None, limit_gb: float | None = None) -> subprocess.CompletedProcess:
    """A dslim command in a subprocess (optionally with its address space capped, so an allocation of a size a
    file merely claims fails loudly instead of passing unnoticed)."""

    def cap() -> None:
        if limit_gb is not None:
            size = int(limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (size, size))

    return subprocess.run([PYTHON, "-m", *args], env=subprocess_env(), capture_output=True, text=True, timeout=300,
                          cwd=cwd, preexec_fn=cap)  # fmt: skip


def assert_user_error(proc: subprocess.CompletedProcess, *names: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("dslim: error:"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])


def files_under(path: Path) -> set[Path]:
    return set(path.rglob("*")) if path.exists() else set()


TRAIN = ("dslim.train", "--recipe", "usnet_digits")


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--data.batch-size", "0"], ["--data.batch-size"]),
        (["--stages.supernet.epochs", "-3"], ["--stages.supernet.epochs"]),
        (["--stages.supernet.epochs", "0"], ["--stages.supernet.epochs"]),
        (["--stages.bn-recalibration.batches", "0"], ["--stages.bn-recalibration.batches"]),
        (["--stages.supernet.optim.lr", "nan"], ["--stages.supernet.optim.lr"]),
        (["--model.num-classes", "5"], ["10 classes", "--model.num-classes"]),
        (["--model.width-range", "0.25", "1.5"], ["--model.width-range"]),
        (["--stages.evaluate.subnets", "0.1"], ["--stages.evaluate.subnets", "0.1"]),
        (["--stages", "polish"], ["polish"]),
        (["--from", "nowhere.safetensors"], ["--from", "nowhere.safetensors"]),
        (["--data.root", "/nonexistent/imagenet"], ["/nonexistent/imagenet"]),
        (["--data.color-jitter", "0", "0", "0", "0.7"], ["--data.color-jitter"]),
        (["--stages.supernet.ema-artifact"], ["--stages.supernet.ema-artifact", "--stages.supernet.ema-decay"]),
    ],
)
def test_train_refuses_bad_settings_before_any_work(tmp_path, digits_cache, args, names):
    out = tmp_path / "run"
    proc = run(*TRAIN, "--out-dir", str(out), "--data.cache-dir", str(digits_cache), *args, cwd=tmp_path)
    assert_user_error(proc, *names)
    assert not out.exists() and files_under(tmp_path) == set()


def test_train_refuses_to_start_from_weights_trained_on_other_inputs(tmp_path, digits_cache):
    """An artifact recording raw [0, 1] pixels (BlockDrop's ResNet-110 weights) cannot start a run that normalizes
    otherwise; the message says which flags match it."""
    from dslim.io import preprocessing
    from dslim.io.artifacts import save_supernet
    from dslim.models import create_supernet

    net = create_supernet("mobilenet_v1", num_classes=10, widths=(0.25, 1.0), width_range=(0.25, 1.0), bn="calibrated")
    raw = preprocessing.convention(**preprocessing.RAW, input_size=32, crop_fraction=1.0)
    save_supernet(net, tmp_path / "raw.safetensors", stage="import", preprocessing=raw)
    out = tmp_path / "run"
    args = ("--out-dir", str(out), "--data.cache-dir", str(digits_cache), "--from", str(tmp_path / "raw.safetensors"))
    proc = run(*TRAIN, *args, "--stages", "bn_recalibration")
    assert_user_error(proc, "raw.safetensors", "--data.mean 0 0 0 --data.std 1 1 1")
    assert not out.exists()


def test_out_dir_that_is_a_file_or_cannot_be_made(tmp_path, digits_cache):
    (tmp_path / "taken").write_text("x")
    for out in (tmp_path / "taken", tmp_path / "taken" / "run"):
        before = files_under(tmp_path)
        proc = run(*TRAIN, "--out-dir", str(out), "--data.cache-dir", str(digits_cache))
        assert_user_error(proc, "--out-dir", str(out))
        assert files_under(tmp_path) == before


def _artifact(path: Path, meta: object, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    header = {"dslim": meta if isinstance(meta, str) else json.dumps(meta)} if meta is not None else None
    save_file(tensors or {"x": torch.zeros(1)}, str(path), metadata=header)
    return path


def _static_file(tmp_path: Path) -> tuple[Path, dict, dict]:
    from dslim.deploy.extraction import save_subnet
    from dslim.evaluation.calibration import recalibrate
    from dslim.models import create_supernet

    net = create_supernet("mobilenet_v1", num_classes=10, max_width=0.25, widths=(0.25,), bn="calibrated")
    path = tmp_path / "good.safetensors"
    recalibrate(net, {"0.25": net.largest()}, [(torch.randn(4, 3, 32, 32), None)], 1)
    save_subnet(net, net.largest(), path, input_size=32)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["dslim"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return path, meta, tensors


def test_damaged_or_foreign_subnet_files_are_refused_in_one_line(tmp_path):
    path, meta, tensors = _static_file(tmp_path)
    dslim.load_subnet(path)  # the intact file loads
    bad = {
        "no metadata": (None, tensors),
        "not JSON": ("{oops", tensors),
        "not an object": ("[1, 2]", tensors),
        "unknown arch": ({**meta, "arch": "vgg19"}, tensors),
        "negative channels": ({**meta, "subnet": {"channels": {**meta["subnet"]["channels"], "stem": -8}}}, tensors),
        "absurd classes": ({**meta, "arch_kwargs": {**meta["arch_kwargs"], "num_classes": 2_000_000}}, tensors),
        "unknown argument": ({**meta, "arch_kwargs": {**meta["arch_kwargs"], "colour": 3}}, tensors),
        "tensors do not fit": (meta, {**tensors, "classifier.weight": torch.zeros(10, 7)}),
        "missing tensor": (meta, {k: v for k, v in tensors.items() if k != "classifier.bias"}),
        "bad input size": ({**meta, "input_size": -1}, tensors),
    }
    for what, (m, t) in bad.items():
        f = _artifact(tmp_path / f"{what.replace(' ', '_')}.safetensors", m, t)
        with pytest.raises(UserError) as e:
            dslim.load_subnet(f)
        assert str(f) in str(e.value) and "\n" not in str(e.value), (what, e.value)
    (tmp_path / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        dslim.load_subnet(tmp_path / "garbage.safetensors")


def test_a_file_claiming_two_million_classes_allocates_nothing(tmp_path):
    """ds_mobilenet_v1 with 2,000,000 classes would take 9 GB for its classifier: the file is refused from its
    tensors' own shapes before any of it is allocated (the process is capped at 3 GB)."""
    from dslim.models import create_supernet

    net = create_supernet("ds_mobilenet_v1", num_classes=10, gate_routes=0)
    from dslim.io.artifacts import save_supernet

    save_supernet(net, tmp_path / "net.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "net.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["dslim"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["arch_kwargs"]["num_classes"] = 2_000_000
    bad = _artifact(tmp_path / "huge.safetensors", meta, tensors)
    script = "import sys; from dslim.io.artifacts import load_supernet; load_supernet(sys.argv[1])"
    cap = 3 * 2**30

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    cmd = [PYTHON, "-c", script, str(bad)]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert "UserError" in proc.stderr and "classifier" in proc.stderr, proc.stderr[-2000:]
    assert "MemoryError" not in proc.stderr and "DefaultCPUAllocator" not in proc.stderr


def test_evaluate_and_export_refuse_a_damaged_run_artifact(tmp_path):
    from test_export_cli import make_run

    run_dir, _ = make_run(tmp_path / "run")
    artifact = run_dir / "supernet" / "model.safetensors"
    _artifact(artifact, {"format": "dslim.supernet/1", "arch": "mobilenet_v1", "arch_kwargs": {"num_classes": -4}})
    assert_user_error(run("dslim.evaluate", "--run", str(run_dir)), str(artifact))
    out = tmp_path / "x.safetensors"
    assert_user_error(run("dslim.export", "--run", str(run_dir), "--subnet", "0.5", "--out", str(out)), str(artifact))
    assert not out.exists() and not (run_dir / "eval.json").exists()


def test_evaluating_more_subnets_adds_to_the_report(tmp_path, monkeypatch, capsys):
    from test_export_cli import batches, fake_loader, make_run

    from dslim.cli.evaluate import main

    run_dir, _ = make_run(tmp_path / "run", bn="calibrated")
    fake_loader(monkeypatch, {"train": batches(3, seed=1), "val": batches(2, seed=2)})
    main(["--run", str(run_dir), "--widths", "0.25", "0.5", "--json"])
    first = json.loads(capsys.readouterr().out)
    main(["--run", str(run_dir), "--widths", "0.42", "0.5", "--json"])
    second = json.loads((run_dir / "eval.json").read_text())
    assert [r["subnet"] for r in second["subnets"]] == ["0.25", "0.42", "0.5"]
    assert second["subnets"][0] == first["subnets"][0]  # kept as it was


def test_profile_names_the_bad_subnet():
    proc = run("dslim.profile", "--recipe", "snet_mbv1", "--widths", "0.33")
    assert_user_error(proc, "0.33")


def _dsnet_file(tmp_path: Path, **changes) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_import_checkpoint import official_state

    state = official_state(torch.Generator().manual_seed(0))
    state.update(changes.get("update", {}))
    for key in changes.get("drop", []):
        del state[key]
    path = tmp_path / f"ckpt{len(list(tmp_path.glob('ckpt*')))}.pth.tar"
    torch.save({"arch": changes.get("arch", "slimmable_mbnet_v1_bn_uniform"), "state_dict": state}, path)
    return path


def test_import_checkpoint_refuses_bad_files_in_one_line(tmp_path):
    out = tmp_path / "out.safetensors"
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    text = tmp_path / "text.pth"
    text.write_text("these are not weights")
    cases = [
        (empty, "is empty"),
        (text, "not a PyTorch checkpoint"),
        (_dsnet_file(tmp_path, drop=["blocks.2.first_block.bn2.aux_bn.0.running_var"]), "aux_bn.0.running_var"),
        (_dsnet_file(tmp_path, update={"conv_stem.weight": torch.zeros(24, 3, 5, 5)}), "conv_stem.weight"),
        (_dsnet_file(tmp_path, update={"head.extra.weight": torch.zeros(3)}), "head.extra.weight"),
        (_dsnet_file(tmp_path, arch="resnet50"), "resnet50"),
    ]
    for path, message in cases:
        proc = run("dslim.import_checkpoint", "dsnet", str(path), "--out", str(out))
        assert_user_error(proc, message)
        assert not out.exists()
    good = _dsnet_file(tmp_path)
    proc = run("dslim.import_checkpoint", "dsnet", str(good), "--out", str(tmp_path / "missing" / "dir" / "o.pt"))
    assert_user_error(proc, ".safetensors")
    (tmp_path / "blocked").write_text("a file where a folder should be")
    proc = run("dslim.import_checkpoint", "dsnet", str(good), "--out", str(tmp_path / "blocked" / "o.safetensors"))
    assert_user_error(proc, "--out")
