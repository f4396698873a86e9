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
    "--stages.bn-recalibration.batches", "2", "--stages.evaluate.calibrate-batches", "2",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, digits_cache: Path) -> Path:
    """supernet (1 epoch) -> bn_recalibration -> evaluate of a 0.5x MobileNet v1 on the digits."""
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
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors", "pareto.png"]
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
    for model in (dslim.load_subnet(alone), dslim.load_subnet(whole, subnet="dynamic")):
        assert type(model).__name__ == "RoutedNet"
        torch.testing.assert_close(_outputs(model, x), expected, atol=1e-5, rtol=1e-5)
    card = json.loads((alone / "config.json").read_text())
    assert card["dynamic"] and card["accuracy"]["top1"] == 83.0
    readme = (whole / "README.md").read_text()
    assert "| **dynamic** | 12.50 |" in readme and "| **uniform-2** |" in readme
    with pytest.raises(UserError, match="holds one model"):
        dslim.load_subnet(alone, subnet="uniform-2")
