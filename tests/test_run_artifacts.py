"""Artifacts and runs the way the ecosystem expects, on one tiny US-Net run trained once for the module: model
folders with model cards, one supernet folder for every width, TensorBoard events, re-running a recorded config."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from conftest import PYTHON, subprocess_env

import dslim
from dslim.cli.export import main as export
from dslim.cli.profile import main as profile
from dslim.errors import UserError
from dslim.evaluation.calibration import calibrate_missing
from dslim.models.complexity import measure
from dslim.stages.run import open_run

TINY = [
    "--recipe", "usnet_digits", "--model.max-width", "0.5", "--model.widths", "0.25", "0.375", "0.5",
    "--model.width-range", "0.25", "0.5", "--stages.supernet.epochs", "1",
    "--stages.supernet.eval-subnets", "0.25", "0.5", "--stages.supernet.log-every", "5",
    "--stages.bn-recalibration.batches", "2", "--stages.evaluate.calibrate-batches", "2", "--tensorboard",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, digits_cache: Path) -> Path:
    """supernet (1 epoch) -> bn_recalibration -> evaluate of a 0.5x MobileNet v1 on the digits, logged to TensorBoard
    (by `--tensorboard`, the alias of `--log-with tensorboard`)."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    argv = [*TINY, "--data.cache-dir", str(digits_cache), "--out-dir", str(out)]
    done = subprocess.run([PYTHON, "-m", "dslim.train", *argv], env=subprocess_env(), capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


@pytest.mark.slow
def test_model_folder_card_equals_the_run(run, tmp_path, capsys):
    """`--format folder`: weights, card, model card and plot; the card's numbers are eval.json's and profile's."""
    folder = tmp_path / "us-050"
    export(["--run", str(run), "--subnet", "0.5", "--format", "folder", "--out", str(folder)])
    capsys.readouterr()
    assert sorted(p.name for p in folder.iterdir()) == [
        ".dslim",
        "README.md",
        "config.json",
        "model.safetensors",
        "pareto.png",
    ]
    card = json.loads((folder / "config.json").read_text())
    evaluated = {r["subnet"]: r for r in json.loads((run / "eval.json").read_text())["subnets"]}
    assert card["accuracy"] == {"top1": evaluated["0.5"]["top1"], "top5": evaluated["0.5"]["top5"],
                                "source": "eval.json"}  # fmt: skip
    profile(["--run", str(run), "--widths", "0.5", "--json"])
    [profiled] = json.loads(capsys.readouterr().out)
    assert (card["macs"], card["params"]) == (profiled["macs"], profiled["params"]) == (
        evaluated["0.5"]["macs"], evaluated["0.5"]["params"])  # fmt: skip
    recorded = json.loads((run / "config.json").read_text())
    assert card["training"] == {"recipe": "usnet_digits", "config": recorded["config"]}
    assert (folder / "pareto.png").read_bytes() == (run / "pareto.png").read_bytes()

    text = (folder / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "dslim" and meta["license"] == "other" and "image-classification" in meta["tags"]
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    assert [m["value"] for m in metrics] == [evaluated["0.5"]["top1"], evaluated["0.5"]["top5"]]
    assert f'dslim.load_subnet("{folder.name}")' in body and "(pareto.png)" in body
    row = f"| **0.5** | {evaluated['0.5']['macs'] / 1e6:,.2f} | {evaluated['0.5']['params'] / 1e6:,.3f} | "
    assert row + f"{evaluated['0.5']['top1']:.2f} | {evaluated['0.5']['top5']:.2f} |" in body
    assert "| supernet |" in body and "usnet_digits" in body  # how it was trained

    model = dslim.load_subnet(folder)
    assert model.input_size == 32 and model.dslim_meta["training"] == card["training"]
    x = torch.randn(4, 3, 32, 32)
    net = open_run(run).supernet.eval()
    with torch.no_grad(), net.using(net.resolve("0.5")):
        expected = net(x)
    torch.testing.assert_close(_outputs(model, x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_one_supernet_folder_gives_every_slice(run, tmp_path, capsys):
    """The whole supernet in one folder: each slice loads as the plain module `dslim.extract` makes of the run's
    supernet, a width calibrated at export included; its card and subnets.json list every slice."""
    folder = tmp_path / "us-all"
    export(["--run", str(run), "--format", "folder", "--out", str(folder), "--subnets", "0.25", "0.375", "0.5",
            "0.4"])  # fmt: skip
    assert "4 slices" in capsys.readouterr().out
    assert (folder / "subnets.json").is_file() and (folder / "README.md").is_file()
    reference = open_run(run)
    net, config = reference.supernet.eval(), reference.config
    calibrate_missing(net, config, {"0.4": net.resolve("0.4")}, 2)  # as the export did: stages.evaluate's 2 batches
    card = json.loads((folder / "config.json").read_text())
    listed = json.loads((folder / "subnets.json").read_text())
    evaluated = {r["subnet"]: r for r in json.loads((run / "eval.json").read_text())["subnets"]}
    x = torch.randn(4, 3, 32, 32)
    for name in ("0.25", "0.375", "0.5", "0.4"):
        subnet = net.resolve(name)
        model, expected = dslim.load_subnet(folder, subnet=name), dslim.extract(net, subnet)
        assert type(model) is type(expected) and model.input_size == 32
        torch.testing.assert_close(_outputs(model, x), _outputs(expected, x), atol=1e-5, rtol=1e-5)
        macs = measure(net, 32, subnet).macs
        assert card["slices"][name]["macs"] == listed[name]["macs"] == macs
        assert listed[name]["subnet"] == subnet.to_json()
        if name in evaluated:
            assert listed[name]["top1"] == card["slices"][name]["accuracy"]["top1"] == evaluated[name]["top1"]
    assert card["slices"]["0.4"]["accuracy"] is None  # not evaluated by the run: said, not invented
    with pytest.raises(UserError, match="give subnet=NAME, one of 0.25, 0.375, 0.5, 0.4"):
        dslim.load_subnet(folder)
    with pytest.raises(UserError, match="no BatchNorm statistics for subnet 0.3"):
        dslim.load_subnet(folder, subnet="0.3")


def test_dynamic_model_folders(tmp_path, capsys):
    """A DS-Net's routing model as a folder of its own, and from the whole supernet's folder: both route each image
    as the supernet does."""
    from test_onnx import _dsnet_run

    run, net, x = _dsnet_run(tmp_path)
    (run / "eval.json").write_text(json.dumps({
        "subnets": [{"subnet": "uniform-2", "macs": 9, "params": 9, "top1": 81.5, "top5": 99.0}],
        "dynamic": {"macs_mean": 12.5e6, "top1": 83.0, "top5": 99.5}}))  # fmt: skip
    expected = net.forward_routed(x)[0]
    alone, whole = tmp_path / "dsnet-dynamic", tmp_path / "dsnet-all"
    export(["--run", str(run), "--dynamic", "--format", "folder", "--out", str(alone)])
    export(["--run", str(run), "--format", "folder", "--out", str(whole), "--subnets", "uniform-0", "uniform-2"])
    capsys.readouterr()
    card = json.loads((alone / "config.json").read_text())
    for model in (dslim.load_subnet(alone), dslim.load_subnet(whole, subnet="dynamic")):
        assert type(model).__name__ == "RoutedNet"
        torch.testing.assert_close(_outputs(model, x), expected, atol=1e-5, rtol=1e-5)
        assert model.preprocessing == card["preprocessing"]  # the inputs it was trained on travel with it
    assert card["dynamic"] and card["accuracy"]["top1"] == 83.0
    readme = (whole / "README.md").read_text()
    assert "| **dynamic** | 12.50 |" in readme and "| **uniform-2** |" in readme
    with pytest.raises(UserError, match="holds one model"):
        dslim.load_subnet(alone, subnet="uniform-2")


@pytest.mark.slow
def test_tensorboard_events_hold_what_metrics_jsonl_holds(run):
    """TensorBoard's own reader finds each logged loss term and learning rate at its step, the per-subnet
    validation top-1 of each epoch, and the final evaluation, as numbers and as a table."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, TENSORS, EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={SCALARS: 0, TENSORS: 0})
    events.Reload()

    def scalars(tag: str) -> dict[int, float]:
        return {e.step: e.value for e in events.Scalars(tag)}

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert len(steps) >= 4 and {"loss/largest", "loss/smallest", "lr"} <= set(steps[0])
    for key in ("loss", "loss/largest", "loss/random", "loss/smallest", "lr"):
        assert scalars(f"supernet/{key}") == pytest.approx({r["step"]: r[key] for r in steps}, rel=1e-6)
    [epoch] = [r for r in records if r["kind"] == "epoch"]
    for name in ("0.25", "0.5"):
        assert scalars(f"supernet/epoch/top1/{name}") == pytest.approx({epoch["step"]: epoch[f"top1/{name}"]})
    report = json.loads((run / "eval.json").read_text())
    for row in report["subnets"]:
        for key in ("top1", "top5", "macs"):
            assert list(scalars(f"evaluate/{key}/{row['subnet']}").values()) == pytest.approx([row[key]], rel=1e-6)
    [table] = events.Tensors("evaluate/table/text_summary")
    text = table.tensor_proto.string_val[0].decode()
    assert all(f"| {r['subnet']} | {r['macs']} | {r['params']} |" in text for r in report["subnets"])


@pytest.mark.slow
def test_a_recorded_config_trains_again(run, tmp_path, capsys):
    """`--config D/config.json` is the run's own config (its directory takes it as the same run, every stage done);
    overrides apply on top; a folder's card and a YAML file work too; a bad file is refused naming file and field."""
    from dslim.cli.train import main as train_here

    def done(*argv: str) -> None:
        train_here([*argv, "--out-dir", str(run)])
        assert "evaluate: done" in capsys.readouterr().out

    def refused(argv: list[str], *words: str) -> None:
        with pytest.raises(SystemExit) as e:
            train_here(argv)
        lines = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(lines) == 1 and all(w in lines[0] for w in words), lines

    done("--config", str(run / "config.json"))
    refused(["--config", str(run / "config.json"), "--out-dir", str(run), "--stages.supernet.epochs", "2"],
                 "started with another config", "stages.supernet.epochs")  # fmt: skip
    folder = tmp_path / "folder"
    export(["--run", str(run), "--subnet", "0.25", "--format", "folder", "--out", str(folder)])
    done("--config", str(folder / "config.json"))
    config = json.loads((run / "config.json").read_text())["config"]
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    done("--config", str(tmp_path / "run.yaml"))
    for field, value, words in (("num_classes", "ten", ("config.model.num_classes", "integer")),
                                ("num_classes", 0, ("--model.num-classes 0",)),
                                ("bn", "batch", ("config.model.bn", "private, switchable, calibrated"))):  # fmt: skip
        bad = tmp_path / f"bad-{field}.yaml"
        bad.write_text(yaml.safe_dump({**config, "model": {**config["model"], field: value}}))
        refused(["--config", str(bad), "--out-dir", str(tmp_path / "never")], str(bad), *words)
    (tmp_path / "tagged.yaml").write_text(f"model: !!python/object/apply:os.system ['touch {tmp_path}/owned']\n")
    refused(["--config", str(tmp_path / "tagged.yaml")], "not readable YAML")
    refused(["--config", str(run / "config.json"), "--recipe", "usnet_digits"], "not both")
    assert not (tmp_path / "never").exists() and not (tmp_path / "owned").exists()


def test_a_tracker_whose_package_is_missing_is_refused(tmp_path, capsys, monkeypatch):
    """`--log-with wandb` without wandb: one line naming the package, exit 2, before any work (no run directory);
    `all` takes only the installed ones."""
    import importlib.util

    from dslim.cli.train import main as train_here
    from dslim.training.trackers import resolve_trackers

    installed = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else installed(name, *a))
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as e:
        train_here(["--recipe", "usnet_digits", "--log-with", "tensorboard", "wandb", "--out-dir", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("dslim: error:") and "pip install wandb" in lines[0]
    assert not out.exists()
    assert "wandb" not in resolve_trackers(["all"]) and "tensorboard" in resolve_trackers(["all"])
