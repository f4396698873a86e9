"""Bad input through the real command line: exit code 2, one line on stderr naming the option or file, no traceback,
and nothing written where the run would have written. Files from elsewhere are checked before anything is built."""

from __future__ import annotations

import json
import resource
import signal
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


def snapshot(path: Path) -> dict[Path, bytes]:
    """Every file under `path` with its bytes (to show that nothing was written, replaced or removed)."""
    return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()} if path.exists() else {}


def run_here(module: str, *args: str) -> tuple[int, str, str]:
    """A command run in this process as `python -m module args` runs it: (exit code, stdout, stderr). For the many
    variants of one kind of bad input (a subprocess pays seconds of imports each)."""
    import contextlib
    import io
    import runpy

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = [module, *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


def assert_refused_here(module: str, *args: str, names: tuple[str, ...] = (), case: str = "") -> str:
    """`run_here` exits 2 with one line naming `names` (`case` says which bad input, when it fails); returns it."""
    code, _, err = run_here(module, *args)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("dslim: note:")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("dslim: error:"), (case, code, err[-2000:])
    for name in names:
        assert name in lines[0], (case, name, lines[0])
    return lines[0]


TRAIN = ("dslim.train", "--recipe", "usnet_digits")
TINY = ("--recipe", "usnet_digits", "--model.max-width", "0.25", "--model.widths", "0.25", "--model.width-range",
        "0.25", "0.25", "--data.batch-size", "256", "--stages.supernet.epochs", "1",
        "--stages.bn-recalibration.batches", "1", "--stages.evaluate.calibrate-batches", "1")  # fmt: skip
"""A US-Net pipeline of seconds: a 0.25x MobileNet v1, one epoch of 5 steps."""


def train_tiny(out: Path, cache: Path, *extra: str) -> Path:
    """A finished TINY run in `out` (`extra`: its stages, other settings), for a module's tests to share."""
    proc = run("dslim.train", *TINY, "--out-dir", str(out), "--data.cache-dir", str(cache), *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


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


# -- signals outside a training loop ------------------------------------------------------------------------------
def _as_from_a_shell() -> None:
    """In the child before exec: SIGINT and SIGTERM unblocked and at their default, as a shell starts a command. A
    pytest worker may carry a blocked or ignored SIGINT from code an earlier test ran in it; exec keeps both, and
    the child would then never see the Ctrl-C (seen in a full suite run: the command ran to the end, exit 0)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", *args], env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_as_from_a_shell)  # fmt: skip


def _wait_until(proc: subprocess.Popen, ready) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.time() + 120
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the command never got there"
        time.sleep(0.01)


def test_ctrl_c_while_starting_is_one_line(tmp_path, digits_cache):
    """Ctrl-C in the first seconds (while PyTorch loads) printed a traceback; now one line, and no run directory."""
    out = tmp_path / "run"
    proc = _start("dslim.train", *TINY, "--out-dir", str(out), "--data.cache-dir", str(digits_cache))
    maps = Path(f"/proc/{proc.pid}/maps")
    _wait_until(proc, lambda: "libtorch" in maps.read_text())  # importing torch, long before any work
    proc.send_signal(2)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (130, -2), err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dslim:") and "interrupted" in lines[0], err
    assert not out.exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits_cache) -> Path:
    """A run whose supernet stage is finished (BN calibration and evaluation not yet run)."""
    return train_tiny(tmp_path_factory.mktemp("trained") / "run", digits_cache, "--stages", "supernet")


@pytest.mark.parametrize(
    ("stage", "settings"),
    [("bn_recalibration", ["--stages.bn-recalibration.batches", "100000"]),
     ("evaluate", ["--data.eval-batch-size", "1", "--stages.evaluate.subnets", "0.25", "0.25"])],
)  # fmt: skip
def test_sigterm_outside_a_training_loop_is_one_line(tmp_path, trained, digits_cache, stage, settings):
    """A scheduler's SIGTERM during BN re-estimation or evaluation ended the process without a word."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained, out)
    proc = _start("dslim.train", *TINY, "--stages", stage, *settings, "--out-dir", str(out), "--data.cache-dir",
                  str(digits_cache))  # fmt: skip
    said: list[str] = []
    _wait_until(proc, lambda: said.append(proc.stdout.readline()) or f"{stage}: starting from" in said[-1])
    proc.send_signal(15)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "signal 15" in lines[0] and stage in lines[0], err
    assert not (out / "bn_recalibration" / "model.safetensors").exists() and not (out / "eval.json").exists()


# -- importers -------------------------------------------------------------------------------------------------------
def test_blockdrop_base_is_read_with_the_importers_allow_list(tmp_path):
    """A pretrained base that pickles its training `argparse.Namespace` imports alone; as `--base` it was refused."""
    import argparse

    sys.path.insert(0, str(Path(__file__).parent))
    from test_import_blockdrop import original_states, pretrained_names, save_t7

    resnet, agent = original_states("cifar_resnet32")
    base, agent_file = tmp_path / "pk_E_164_A_0.923.t7", tmp_path / "ckpt_E_5.t7"
    save_t7({"state_dict": pretrained_names(resnet), "epoch": 164, "args": argparse.Namespace(lr=0.1)}, base)
    save_t7({"agent": agent, "epoch": 5}, agent_file)
    alone = run("dslim.import_checkpoint", "blockdrop", str(base), "--out", str(tmp_path / "base.safetensors"))
    assert alone.returncode == 0, alone.stderr[-2000:]
    out = tmp_path / "bd.safetensors"
    done = run("dslim.import_checkpoint", "blockdrop", str(agent_file), "--base", str(base), "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert json.loads(f.metadata()["dslim"])["arch_kwargs"]["block_policy"] is True


def test_more_bad_inputs_found_by_trying(tmp_path):
    """Beyond issue #17's list: what a new user typed that was taken silently, ran for hours or crashed."""
    latency = ("dslim.latency", "--recipe", "usnet_digits", "--warmup", "0", "--repeats", "1", "--out",
               str(tmp_path / "l.json"))  # fmt: skip
    cases = [
        (("dslim.train", "--recipe", "usnet_digits", "--out-dir", ""), ("--out-dir",)),  # trained into runs/<recipe>
        (("dslim.train", "--recipe", "", "--out-dir", str(tmp_path / "r")), ("--recipe",)),  # took Config() as is
        (("dslim.profile", "--recipe", ""), ("--recipe",)),
        ((*latency, "--batch", "100000000"), ("out of memory",)),  # an allocator traceback
        ((*latency, "--layers", "100000"), ("--layers",)),  # timed 100,000 subnets
        (("dslim.export", "--run", str(tmp_path), "--subnet", "0.5", "--out", str(tmp_path / ".safetensors")),
         (".safetensors",)),  # wrote a hidden `.safetensors` and `.config.json`
    ]  # fmt: skip
    for args, names in cases:
        assert_refused_here(*args, names=names, case=" ".join(args))
    assert list(tmp_path.iterdir()) == []
