"""dslim only ever removes or replaces what it wrote itself (issue #17).

Every command that writes is pointed at places holding a user's files (among them names like dslim's own
temporaries and outputs, nested deeply): an existing target dslim did not write is refused in one line, a file or a
folder dslim wrote is replaced only with `--overwrite`, a run's own artifacts never; every user file survives byte
for byte (the `user_files` fixture checks them when each test ends).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from test_bad_inputs import TINY, assert_refused_here, assert_user_error, run, run_here, snapshot, train_tiny

import dslim

STAGES = ("--stages", "supernet", "bn_recalibration", "evaluate", "export")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, digits_cache) -> Path:
    """A tiny finished US-Net run (supernet, BN calibration, evaluation, export): D/export/0.25.safetensors."""
    return train_tiny(tmp_path_factory.mktemp("finished") / "run", digits_cache, *STAGES)


@pytest.fixture(scope="module")
def dynamic(tmp_path_factory) -> Path:
    """A run whose DS-Net gate is trained (random weights): `--dynamic --format onnx` exports a folder."""
    from test_export_cli import make_run

    from dslim.config import ModelConfig

    model = ModelConfig(arch="ds_mobilenet_v1", num_classes=10, input_size=32, bn="private", gate_routes=4)
    run_dir, _ = make_run(tmp_path_factory.mktemp("dynamic") / "run", stage="gate", model=model)
    return run_dir


def export(run_dir: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """`dslim.export` in a subprocess: one case of each kind runs as users run it."""
    return run("dslim.export", "--run", str(run_dir), "--out", str(out), *extra)


def refused(run_dir: Path, out: Path, *extra: str, names: tuple[str, ...]) -> None:
    """`dslim.export` refused in one line naming `names`, run in this process (the other cases of a kind)."""
    assert_refused_here("dslim.export", "--run", str(run_dir), "--out", str(out), *extra, names=names, case=str(out))


def done(module: str, *args: str) -> None:
    code, _, err = run_here(module, *args)
    assert code == 0, err[-3000:]


ONNX = ("--dynamic", "--format", "onnx", "--exporter", "torchscript")


def test_an_onnx_folder_never_replaces_a_folder_dslim_did_not_write(tmp_path, dynamic, user_files):
    """The README's `--dynamic --format onnx --out DIR` one existing folder away: it deleted DIR and exited 0."""
    mine = user_files.plant(tmp_path / "mine")
    assert_user_error(export(dynamic, mine, *ONNX), str(mine), "not written by dslim")
    refused(dynamic, mine, *ONNX, "--overwrite", names=(str(mine), "not written by dslim"))
    assert sorted(p.name for p in mine.iterdir()) == sorted({n.split("/")[0] for n in user_files.NAMES})


def test_an_onnx_folder_dslim_wrote_is_replaced_only_with_overwrite(tmp_path, dynamic, user_files):
    folder = tmp_path / "dyn"
    written = export(dynamic, folder, *ONNX)
    assert written.returncode == 0, written.stderr[-3000:]
    before = snapshot(folder)
    refused(dynamic, folder, *ONNX, names=(str(folder), "--overwrite"))
    assert snapshot(folder) == before
    done("dslim.export", "--run", str(dynamic), "--out", str(folder), *ONNX, "--overwrite")
    assert (folder / "routing.json").is_file() and (folder / "config.json").is_file()
    # a file the user put into dslim's folder is not dslim's to delete: the folder is not replaced any more
    user_files.plant(folder, ("my-notes.txt",))
    refused(dynamic, folder, *ONNX, "--overwrite", names=(str(folder), "my-notes.txt"))


def test_a_file_is_replaced_only_with_overwrite(tmp_path, finished, user_files):
    user_files.plant(tmp_path, ("model.safetensors", "other.config.json"))
    target = tmp_path / "model.safetensors"
    assert_user_error(export(finished, target, "--subnet", "0.25"), str(target), "--overwrite")
    # the model's card beside it is an output too: a user's `other.config.json` is not replaced by a card
    card_clash = tmp_path / "other.safetensors"
    refused(finished, card_clash, "--subnet", "0.25", names=("other.config.json", "--overwrite"))
    assert not card_clash.exists()
    channels = tmp_path / "notes.json"
    channels.write_text('{"mine": true}\n')
    assert_refused_here("dslim.export", "--run", str(finished), "--subnet", "0.25", "--channels-out", str(channels),
                        names=(str(channels), "--overwrite"))  # fmt: skip
    assert channels.read_text() == '{"mine": true}\n'
    new = tmp_path / "new.safetensors"
    done("dslim.export", "--run", str(finished), "--subnet", "0.25", "--out", str(new))
    done("dslim.export", "--run", str(finished), "--subnet", "0.25", "--out", str(new), "--overwrite")  # + its card
    assert dslim.load_subnet(new).input_size == 32
    user_files.files.pop(target)  # replaced on request:
    done("dslim.export", "--run", str(finished), "--subnet", "0.25", "--out", str(target), "--overwrite")
    assert dslim.load_subnet(target).input_size == 32


def test_nothing_inside_a_run_but_a_new_file_in_its_export_folder(tmp_path, finished, dynamic):
    """A run's own artifacts (and the run itself) are never an export's target, with or without `--overwrite`."""
    before = snapshot(finished)
    artifact = finished / "bn_recalibration" / "model.safetensors"  # replaced, the run could not be read any more
    assert_user_error(export(finished, artifact, "--subnet", "0.25"), str(artifact))
    targets = [
        artifact,
        finished / "export" / "0.25.safetensors",  # the export stage's own output
        finished / "supernet" / "new.safetensors",  # new, but not in export/
        finished / "eval.safetensors",
    ]
    for target in targets:
        refused(finished, target, "--subnet", "0.25", "--overwrite", names=(str(target),))
    # another run's folder is as safe as the one exported from
    refused(
        dynamic, finished / "supernet" / "x.onnx", "--subnet", "largest", "--format", "onnx", names=(str(finished),)
    )
    assert snapshot(finished) == before
    dyn_before = snapshot(dynamic)
    for target in (dynamic, dynamic / "gate", finished / "export"):
        for extra in ((), ("--overwrite",)):
            refused(dynamic, target, *ONNX, *extra, names=(str(target),))
    assert snapshot(dynamic) == dyn_before and snapshot(finished) == before
    # nor a channel file or a latency table written into a run, over its record or anywhere but a new name in export/
    record = finished / "config.json"
    assert_refused_here("dslim.export", "--run", str(finished), "--subnet", "0.25", "--channels-out", str(record),
                        "--overwrite", names=(str(record),))  # fmt: skip
    assert_refused_here("dslim.latency", "--recipe", "usnet_digits", "--subnets", "0.25", "--warmup", "0", "--repeats",
                        "1", "--out", str(record), "--overwrite", names=(str(record),))  # fmt: skip
    assert snapshot(finished) == before
    new = finished / "export" / "mine.safetensors"
    done("dslim.export", "--run", str(finished), "--subnet", "0.25", "--out", str(new))
    new.unlink()
    new.with_name("mine.config.json").unlink()
    assert snapshot(finished) == before


def test_train_never_sweeps_or_writes_into_a_users_folder(tmp_path, digits_cache, user_files, monkeypatch):
    """`--out-dir` of an existing folder holding a user's files (`.` included) is refused; it removed every
    `.tmp-*` folder and `.*.tmp` file under it, even when the command was then refused."""
    mine = user_files.plant(tmp_path / "mine")
    proc = run("dslim.train", *TINY, "--out-dir", str(mine), "--data.cache-dir", str(digits_cache))
    assert_user_error(proc, "--out-dir", "not a dslim run")
    monkeypatch.chdir(mine)
    assert_refused_here("dslim.train", *TINY, "--out-dir", ".", names=("--out-dir", "not a dslim run"))
    assert snapshot(mine) == {p: p.read_bytes() for p in user_files.files}


def test_a_run_sweeps_only_its_own_temporaries(tmp_path, finished, digits_cache, user_files):
    """Files named like temporaries that the user put into a run (at the places dslim writes its own, and deeper)
    survive re-running the run, finished or refused."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    for folder in (run_dir, run_dir / "supernet", run_dir / "supernet" / "state", run_dir / "export"):
        user_files.plant(folder, (".tmp-mine/a.txt", ".mine.tmp", ".tmp-ckpt-000000009/trainer.json",
                                  "deep/.tmp-x/.y.tmp"))  # fmt: skip
    args = [*TINY, "--out-dir", str(run_dir), "--data.cache-dir", str(digits_cache)]
    again = run("dslim.train", *args, *STAGES)
    assert again.returncode == 0 and "supernet: done" in again.stdout, again.stderr[-2000:]
    assert_user_error(run("dslim.train", *args, "--seed", "5"), "started with another config")


def test_other_commands_replace_files_only_with_overwrite(tmp_path, finished, user_files, monkeypatch):
    """`import_checkpoint --out`, `latency --out` (and its default ./latency.json)."""
    user_files.plant(tmp_path, ("imported.safetensors", "latency.json", "table.json"))
    source = tmp_path / "source.safetensors"
    shutil.copy(finished / "supernet" / "model.safetensors", source)
    proc = run("dslim.import_checkpoint", "dsnet", str(source), "--out", str(tmp_path / "imported.safetensors"))
    assert_user_error(proc, "imported.safetensors", "--overwrite")
    inside = finished / "supernet" / "x.safetensors"
    assert_refused_here("dslim.import_checkpoint", "dsnet", str(source), "--out", str(inside), names=(str(finished),))
    base = ["--recipe", "usnet_digits", "--subnets", "0.25", "--warmup", "0", "--repeats", "1"]
    table = tmp_path / "table.json"
    assert_refused_here("dslim.latency", *base, "--out", str(table), names=("table.json", "--overwrite"))
    monkeypatch.chdir(tmp_path)
    assert_refused_here("dslim.latency", *base, names=("latency.json", "--overwrite"))
    user_files.files.pop(table)
    done("dslim.latency", *base, "--out", str(table), "--overwrite")
    assert "0.25" in json.loads(table.read_text())["subnets"]


def test_the_python_api_never_replaces_a_users_folder(tmp_path, user_files):
    """`export_dynamic` (what the command and the export stage call) refuses a folder it did not write."""
    from test_onnx import _routed_dsnet

    from dslim.deploy.onnx import export_dynamic
    from dslim.errors import UserError

    net, _ = _routed_dsnet()
    mine = user_files.plant(tmp_path / "mine")
    with pytest.raises(UserError, match="not written by dslim"):
        export_dynamic(net, mine, 64, exporter="torchscript")
    assert not [p for p in tmp_path.iterdir() if p != mine]  # no temporary folder left beside it


def test_a_run_folder_killed_while_being_marked_is_not_a_users_folder(tmp_path, user_files):
    """SIGKILL while a new run writes its marker leaves only dslim's temporary: the folder is still dslim's to use
    (the soak test of tests/test_interrupt.py found the rerun refused); a user's file makes it the user's."""
    from dslim.errors import UserError
    from dslim.io.atomic import TEMPORARY
    from dslim.io.outputs import check_run_dir

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / f"{TEMPORARY}.dslim.x1y2").write_text("{")
    assert check_run_dir(run_dir) is False
    user_files.plant(run_dir, ("notes.txt",))
    with pytest.raises(UserError, match="not a dslim run"):
        check_run_dir(run_dir)
