"""Damage and exhaustion (issue #17): damaged checkpoints, full disks, and every file dslim reads.

- Resuming from a damaged latest checkpoint (truncated weights or optimizer state, zeroed or missing trainer state)
  falls back to the newest complete one, says so, and ends with the weights of an uninterrupted run.
- A full disk (or any error writing) ends with one line and leaves the previous file as it was.
- Each kind of file dslim reads (config.json, subnets.json, latency.json, eval.json, artifact metadata, channel
  files, routing.json, metrics.jsonl) is refused in one line naming it when it is too large, not UTF-8, nested too
  deep or of the wrong types.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, subprocess_env
from safetensors.torch import load_file, save_file
from test_bad_inputs import TINY, assert_refused_here, assert_user_error, run, snapshot, train_tiny

import dslim

# -- damaged checkpoints -------------------------------------------------------------------------------------------


RESUMED = ("--stages", "supernet", "--stages.supernet.checkpoint-every", "2")


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, digits_cache) -> tuple[Path, dict]:
    """A supernet stage with checkpoints after steps 4 and 5, its artifact removed (as if killed just before
    writing it), and the weights the uninterrupted stage ended with."""
    out = train_tiny(tmp_path_factory.mktemp("interrupted") / "run", digits_cache, *RESUMED)
    artifact = out / "supernet" / "model.safetensors"
    weights = load_file(artifact)
    artifact.unlink()
    assert [p.name for p in sorted((out / "supernet" / "state").iterdir())] == ["ckpt-000000004", "ckpt-000000005"]
    return out, weights


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


DAMAGE = {
    "truncated weights": lambda ckpt: _truncate(ckpt / "model.safetensors"),
    "truncated optimizer state": lambda ckpt: _truncate(ckpt / "optimizer.bin"),
    "zeroed trainer state": lambda ckpt: (ckpt / "trainer.json").write_bytes(
        b"\0" * (ckpt / "trainer.json").stat().st_size
    ),
    "missing trainer state": lambda ckpt: (ckpt / "trainer.json").unlink(),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_resume_falls_back_to_the_newest_complete_checkpoint(tmp_path, interrupted, digits_cache, damage):
    source, weights = interrupted
    out = tmp_path / "run"
    shutil.copytree(source, out)
    DAMAGE[damage](out / "supernet" / "state" / "ckpt-000000005")
    proc = run("dslim.train", *TINY, *RESUMED, "--out-dir", str(out), "--data.cache-dir", str(digits_cache))
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = proc.stdout + proc.stderr
    assert "ckpt-000000005" in said and "damaged" in said and "resuming from" in said, said
    assert "ckpt-000000004" in said.split("resuming from")[1].splitlines()[0], said
    resumed = load_file(out / "supernet" / "model.safetensors")
    assert resumed.keys() == weights.keys() and all(resumed[k].equal(weights[k]) for k in weights)


def test_every_checkpoint_damaged_is_one_line(tmp_path, interrupted, digits_cache):
    source, _ = interrupted
    out = tmp_path / "run"
    shutil.copytree(source, out)
    for ckpt in (out / "supernet" / "state").iterdir():
        (ckpt / "trainer.json").write_text("{")
    proc = run("dslim.train", *TINY, *RESUMED, "--out-dir", str(out), "--data.cache-dir", str(digits_cache))
    assert_user_error(proc, str(out / "supernet" / "state"))


# -- full disks ----------------------------------------------------------------------------------------------------


def _file_size_limit(size: int):  # type: ignore[no-untyped-def]
    """A child process whose files cannot grow beyond `size` bytes: writing more fails with EFBIG, as a full disk
    fails with ENOSPC (SIGXFSZ ignored, so the write returns the error instead of killing the process)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return limit


def _limited(size: int, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", *args], env=subprocess_env(), capture_output=True, text=True, timeout=300,
                          cwd=cwd, preexec_fn=_file_size_limit(size))  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory, digits_cache) -> Path:
    return train_tiny(tmp_path_factory.mktemp("finished") / "run", digits_cache, "--stages", "supernet")


def _no_temporaries(root: Path) -> None:
    left = [p for p in root.rglob("*") if "tmp" in p.name]
    assert not left, left


def test_a_full_disk_while_exporting_keeps_the_previous_file(tmp_path, finished):
    out = tmp_path / "m.safetensors"
    assert run("dslim.export", "--run", str(finished), "--subnet", "0.25", "--out", str(out)).returncode == 0
    before = snapshot(tmp_path)
    for fmt in ("safetensors", "onnx"):
        target = out if fmt == "safetensors" else tmp_path / "m.onnx"
        proc = _limited(64 * 1024, "dslim.export", "--run", str(finished), "--subnet", "0.25", "--out", str(target),
                        "--format", fmt, "--exporter", "torchscript", "--overwrite")  # fmt: skip
        assert_user_error(proc, str(target))
    assert snapshot(tmp_path) == before
    _no_temporaries(tmp_path)


def test_a_full_disk_while_checkpointing_is_one_line(tmp_path, digits_cache):
    out = tmp_path / "run"
    proc = _limited(256 * 1024, "dslim.train", *TINY, "--stages", "supernet", "--out-dir", str(out),
                    "--data.cache-dir", str(digits_cache))  # fmt: skip
    assert_user_error(proc, "cannot write")
    _no_temporaries(tmp_path)


def test_a_full_tmpfs(tmp_path, finished, digits_cache):
    """A real full disk (ENOSPC) where this machine lets a test mount a 1 MiB tmpfs (root); skipped elsewhere."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        out = disk / "m.safetensors"
        done = run("dslim.export", "--run", str(finished), "--subnet", "0.25", "--out", str(out))
        assert done.returncode == 0, done.stderr[-2000:]
        before = snapshot(disk)
        proc = run("dslim.export", "--run", str(finished), "--subnet", "0.25", "--out", str(out), "--overwrite")
        assert_user_error(proc, str(out), "No space left")
        assert snapshot(disk) == before
        out.unlink()
        out.with_name("m.config.json").unlink()
        proc = run("dslim.train", *TINY, "--stages", "supernet", "--out-dir", str(disk / "run"), "--data.cache-dir",
                   str(digits_cache))  # fmt: skip
        assert_user_error(proc, "No space left")
        _no_temporaries(disk)
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# -- every file dslim reads ----------------------------------------------------------------------------------------

NOT_UTF8 = b'{"config": "\xff\xfe caf\xe9"}'
DEEP = b"[" * 200_000 + b"]" * 200_000


def _huge(path: Path) -> None:
    """A sparse file claiming 2 GiB: refused from its size, never read."""
    with open(path, "wb") as f:
        f.truncate(2 * 2**30)


@pytest.fixture
def small_run(tmp_path) -> Path:
    from test_export_cli import make_run

    run_dir, _ = make_run(tmp_path / "run", bn="calibrated")
    return run_dir


def _variants(path: Path, wrong_types: list[bytes]):  # type: ignore[no-untyped-def]
    """Write each damaged version of `path` in turn, yielding its description."""
    for what, data in [("not UTF-8", NOT_UTF8), ("nested too deep", DEEP), ("not JSON", b"{'a': 1,"),
                       *((f"wrong types {i}", d) for i, d in enumerate(wrong_types))]:  # fmt: skip
        path.write_bytes(data)
        yield what
    _huge(path)
    yield "too large"


def test_config_json(small_run):
    path = small_run / "config.json"
    good = json.loads(path.read_text())
    wrong = [
        b"[1, 2]",
        json.dumps({**good, "config": {**good["config"], "model": {**good["config"]["model"], "num_classes": "ten"}}}),
        json.dumps({**good, "config": {**good["config"], "model": {**good["config"]["model"], "widths": [0.5, "x"]}}}),
        json.dumps({**good, "config": {**good["config"], "seed": 1.5}}),
        json.dumps({**good, "config": {**good["config"], "data": {**good["config"]["data"], "flip": "yes"}}}),
        json.dumps({**good, "config": {**good["config"], "model": {**good["config"]["model"], "bn": "magic"}}}),
    ]
    for what in _variants(path, [w.encode() if isinstance(w, str) else w for w in wrong]):
        assert_refused_here("dslim.profile", "--run", str(small_run), names=(str(path),), case=what)
    path.write_bytes(NOT_UTF8)
    assert_user_error(run("dslim.evaluate", "--run", str(small_run)), str(path))


def test_subnets_json(small_run):
    path = small_run / "search" / "subnets.json"
    path.parent.mkdir()
    good = {"subnet": {"channels": {"stem": 8}}, "macs": 1, "params": 1}
    wrong = [b"[]", json.dumps({"a": {**good, "macs": "many"}}).encode(), json.dumps({"a": 5}).encode(),
             json.dumps({"a": {**good, "subnet": {"channels": {"stem": "8"}}}}).encode()]  # fmt: skip
    for what in _variants(path, wrong):
        assert_refused_here("dslim.profile", "--run", str(small_run), names=(str(path),), case=what)
    path.write_bytes(DEEP)
    assert_user_error(run("dslim.profile", "--run", str(small_run)), str(path))


def test_latency_json(tmp_path):
    path = tmp_path / "latency.json"
    wrong = [b'{"format": "dslim.latency/1", "subnets": {}, "batches": ["one"]}',
             b'{"format": "dslim.latency/1", "subnets": {"0.5": {"subnet": {}, "ms": {"1": "fast"}}}, "batches": [1]}',
             b'{"format": "dslim.latency/1", "subnets": [], "batches": [1]}']  # fmt: skip
    for what in _variants(path, wrong):
        assert_refused_here("dslim.profile", "--recipe", "usnet_digits", "--latency", str(path), names=(str(path),),
                            case=what)  # fmt: skip
    path.write_bytes(DEEP)
    assert_user_error(run("dslim.profile", "--recipe", "usnet_digits", "--latency", str(path)), str(path))


def test_eval_json(small_run, tmp_path):
    """The export card reads the run's eval.json: a damaged one is named, not crashed on (or silently copied)."""
    path = small_run / "eval.json"
    out = tmp_path / "m.safetensors"
    wrong = [b'{"subnets": {"0.5": 1}}', b'{"subnets": [{"subnet": "0.5", "top1": "high", "macs": 1}]}',
             b'{"subnets": [], "dynamic": [1]}']  # fmt: skip
    for what in _variants(path, wrong):
        assert_refused_here("dslim.export", "--run", str(small_run), "--subnet", "0.5", "--out", str(out),
                            names=(str(path),), case=what)  # fmt: skip
        assert not out.exists()
    path.write_bytes(DEEP)
    assert_user_error(run("dslim.export", "--run", str(small_run), "--subnet", "0.5", "--out", str(out)), str(path))


def test_artifact_metadata(small_run, tmp_path):
    artifact = small_run / "supernet" / "model.safetensors"
    tensors = load_file(artifact)
    from safetensors import safe_open

    with safe_open(str(artifact), "pt") as f:
        meta = json.loads(f.metadata()["dslim"])
    out = tmp_path / "m.safetensors"
    for what, raw in [
        ("nested too deep", "[" * 200_000 + "]" * 200_000),
        ("deep inside", json.dumps({**meta, "extra": json.loads("[" * 500 + "]" * 500)})),
        ("wrong subnets", json.dumps({**meta, "subnets": {"a": {"channels": {"stem": "8"}}}, "extra_names": ["a"]})),
        ("wrong router flag", json.dumps({**meta, "router_trained": "yes"})),
        ("wrong extra names", json.dumps({**meta, "extra_names": "a"})),
    ]:
        save_file(tensors, str(artifact), metadata={"dslim": raw})
        assert_refused_here("dslim.export", "--run", str(small_run), "--subnet", "0.5", "--out", str(out),
                            names=(str(artifact),), case=what)  # fmt: skip
    assert not out.exists()
    save_file(tensors, str(artifact), metadata={"dslim": "[" * 200_000 + "]" * 200_000})
    assert_user_error(run("dslim.evaluate", "--run", str(small_run)), str(artifact))
    static = tmp_path / "static.safetensors"
    save_file({"x": tensors["classifier.bias"]}, str(static), metadata={"dslim": "[" * 200_000 + "]" * 200_000})
    from dslim.errors import UserError

    with pytest.raises(UserError, match="static.safetensors"):
        dslim.load_subnet(static)


def test_channel_files(small_run, tmp_path):
    for suffix, wrong in [
        (".json", [b'{"channels": {"stem": "8"}}', b'{"channels": [8]}', b"[8]"]),
        (".yaml", [b"- [" * 5000, b"stem: [1, 2]", b"\xff\xfe: 1"]),
    ]:
        path = tmp_path / f"bad{suffix}"
        for what in _variants(path, wrong):
            assert_refused_here("dslim.profile", "--run", str(small_run), "--channels", str(path),
                                names=(str(path),), case=what)  # fmt: skip
    path = tmp_path / "deep.yaml"
    path.write_bytes(b"a: " + b"[" * 100_000 + b"]" * 100_000)
    assert_user_error(run("dslim.export", "--run", str(small_run), "--channels", str(path), "--channels-out",
                          str(tmp_path / "c.json")), str(path))  # fmt: skip
    assert not (tmp_path / "c.json").exists()


def test_routing_json_of_an_onnx_folder(tmp_path):
    from dslim.deploy import runtime
    from dslim.errors import UserError

    folder = tmp_path / "dyn"
    folder.mkdir()
    for data in (NOT_UTF8, DEEP, b'{"format": "dslim.routing/1", "graphs": [], "program": 3}'):
        (folder / "routing.json").write_bytes(data)
        with pytest.raises(UserError, match="routing.json"):
            runtime.load(folder)


def test_a_damaged_line_inside_metrics_jsonl(tmp_path, interrupted, digits_cache):
    """metrics.jsonl is read back when a stage resumes: a line damaged in the middle is named, not crashed on."""
    source, _ = interrupted
    out = tmp_path / "run"
    shutil.copytree(source, out)
    metrics = out / "metrics.jsonl"
    lines = metrics.read_bytes().splitlines(keepends=True)
    metrics.write_bytes(lines[0] + b'{"kind": "step", oops\n' + b"".join(lines[1:]))
    proc = run("dslim.train", *TINY, *RESUMED, "--out-dir", str(out), "--data.cache-dir", str(digits_cache))
    assert_user_error(proc, str(metrics), "line 2")
