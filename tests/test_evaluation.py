"""Evaluation: accuracy equal to a hand count, the eval.json contract, the plot, run directories, the command."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from test_export_cli import ROOT, batches, fake_loader, make_run

from dslim import recipes
from dslim.cli.evaluate import main
from dslim.config import Config, ModelConfig
from dslim.errors import UserError
from dslim.evaluation.accuracy import evaluate
from dslim.evaluation.plots import plot_pareto
from dslim.evaluation.report import write_report
from dslim.io.artifacts import save_supernet
from dslim.models.complexity import measure
from dslim.stages.layout import RunLayout, stage_order
from dslim.stages.run import config_from_json, load_config

PNG = b"\x89PNG\r\n\x1a\n"


def _hand_count(net, subnet, data):
    correct1 = correct5 = total = 0
    with torch.no_grad(), net.using(subnet):
        for x, y in data:
            logits = net(x)
            correct1 += int((logits.argmax(1) == y).sum())
            correct5 += sum(int(label in row) for row, label in zip(logits.topk(5, 1).indices.tolist(), y.tolist()))
            total += len(y)
    return 100.0 * correct1 / total, 100.0 * correct5 / total


def test_accuracy_and_cost_equal_a_hand_count(tmp_path):
    _, net = make_run(tmp_path / "run")
    data = batches(3, seed=2) + batches(1, seed=3, batch=4)  # a partial last batch
    net.train().set_subnet(net.resolve("1.0"))
    rows = evaluate(net, {"0.25": net.resolve("0.25"), "0.5": net.resolve("0.5")}, data, 32)
    assert net.training and net.subnet == net.resolve("1.0")  # mode and subnet restored
    net.eval()
    assert [r["subnet"] for r in rows] == ["0.25", "0.5"]
    for row in rows:
        subnet = net.resolve(row["subnet"])
        top1, top5 = _hand_count(net, subnet, data)
        assert row["top1"] == pytest.approx(top1) and row["top5"] == pytest.approx(top5)
        cost = measure(net, 32, subnet)
        assert (row["macs"], row["params"]) == (cost.macs, cost.params)
    assert rows[0]["macs"] < rows[1]["macs"]
    assert 0 < rows[1]["top1"] < 100 and rows[1]["top1"] <= rows[1]["top5"]


def test_missing_statistics_is_a_user_error(tmp_path):
    _, net = make_run(tmp_path / "run", bn="calibrated")
    with pytest.raises(UserError, match="no BatchNorm statistics"):
        evaluate(net, {"0.3": net.resolve("0.3")}, batches(1, seed=0), 32)


def test_report_follows_the_contract(tmp_path):
    rows = [
        {"subnet": "0.25", "macs": 1_000_000, "params": 20_000, "top1": 50.0, "top5": 80.0},
        {"subnet": "1.0", "macs": 9_000_000, "params": 90_000, "top1": 70.0, "top5": 90.0},
    ]
    report = write_report(tmp_path / "a", rows)
    saved = json.loads((tmp_path / "a" / "eval.json").read_text())
    assert saved == report == {"subnets": rows} and "dynamic" not in saved
    assert (tmp_path / "a" / "pareto.png").read_bytes().startswith(PNG)
    dynamic = {"macs_mean": 4_000_000.0, "top1": 68.0, "routes": {"uniform-0": 10, "uniform-3": 5}}
    write_report(tmp_path / "b", rows, dynamic)
    saved = json.loads((tmp_path / "b" / "eval.json").read_text())
    assert saved == {"subnets": rows, "dynamic": dynamic}
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["eval.json", "pareto.png"]  # no temp files left
    plot_pareto({"a": json.loads((tmp_path / "a" / "eval.json").read_text()), "b": saved}, tmp_path / "both.png")
    assert (tmp_path / "both.png").read_bytes().startswith(PNG)


def test_config_json_round_trip_for_every_recipe():
    for name in recipes.names():
        config = recipes.load(name)
        rebuilt = config_from_json(json.loads(json.dumps(dataclasses.asdict(config))))
        assert rebuilt == config, name
        assert isinstance(rebuilt.model.widths, tuple) and isinstance(rebuilt.data.mean, tuple)
    assert config_from_json({"model": {"arch": "resnet50"}}) == Config(model=ModelConfig(arch="resnet50"))
    with pytest.raises(UserError, match="does not know"):
        config_from_json({"model": {"arch": "x", "colour": 3}})


def test_latest_finished_stage_is_found(tmp_path):
    run, net = make_run(tmp_path / "run")

    def latest():
        return RunLayout(run).supernet_before(stage_order(load_config(run)))

    assert latest() == run / "supernet" / "model.safetensors"
    save_supernet(net, run / "bn_recalibration" / "model.safetensors", stage="bn_recalibration")
    assert latest() == run / "bn_recalibration" / "model.safetensors"


def test_command_calibrates_any_width_and_prints_only_json(tmp_path, monkeypatch, capsys):
    run, _ = make_run(tmp_path / "run", bn="calibrated")
    calls = fake_loader(monkeypatch, {"train": batches(3, seed=1), "val": batches(2, seed=2)})
    main(["--run", str(run), "--widths", "0.42", "0.5", "--json"])
    report = json.loads(capsys.readouterr().out)  # stdout holds the JSON and nothing else
    assert [r["subnet"] for r in report["subnets"]] == ["0.42", "0.5"] and "dynamic" not in report
    assert [c[0] for c in calls] == ["train", "val"]
    assert json.loads((run / "eval.json").read_text()) == report
    assert (run / "pareto.png").read_bytes().startswith(PNG)
    main(["--run", str(run), "--widths", "0.5", "--batches", "1"])  # a quick look: printed, nothing written
    assert "top-1" in capsys.readouterr().out
    assert json.loads((run / "eval.json").read_text()) == report


def test_command_evaluates_the_dynamic_model_after_a_gate_stage(tmp_path, monkeypatch, capsys):
    model = ModelConfig(arch="ds_mobilenet_v1", num_classes=10, input_size=32, bn="private")
    run, net = make_run(tmp_path / "run", stage="gate", model=model)
    val = batches(2, seed=2)
    fake_loader(monkeypatch, {"val": val})
    main(["--run", str(run), "--widths", "smallest", "largest", "--json"])
    dynamic = json.loads(capsys.readouterr().out)["dynamic"]
    assert dynamic == json.loads((run / "eval.json").read_text())["dynamic"]
    assert sum(dynamic["routes"].values()) == 12
    routes = {name: net.resolve(name) for name in dynamic["routes"]}
    with torch.no_grad():
        top1 = 100.0 * sum(int((net.forward_routed(x)[0].argmax(1) == y).sum()) for x, y in val) / 12
    assert dynamic["top1"] == pytest.approx(top1)
    macs = {name: measure(net, 32, s).macs for name, s in routes.items()}
    assert min(macs.values()) <= dynamic["macs_mean"] <= max(macs.values()) + net.gate_block.gate.weight.numel()


def test_command_bad_inputs_exit_2(tmp_path, capsys):
    run, _ = make_run(tmp_path / "run")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "dslim.evaluate", "--run", str(tmp_path / "nowhere")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("dslim: error: run directory"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    for args, message in [(["--widths", "0.5", "0.9"], "width 0.9"), (["--batches", "0"], "--batches")]:
        with pytest.raises(SystemExit) as e:
            main(["--run", str(run), *args])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (run / "eval.json").exists()
