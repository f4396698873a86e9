"""The `search` stage: held-out split required, resumed after SIGKILL to the same trace, two processes search the
same path as one, and any supernet whose groups have choices (DS-Net) can be searched."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import PYTHON, subprocess_env

from dslim.io.artifacts import save_supernet
from dslim.methods.autoslim import Step, follows
from dslim.models import create_supernet
from dslim.models.complexity import measure
from dslim.subnet import Subnet

# a 0.5x MobileNet v1 (3.0M MACs at 32px) in 12 bins, 60 held-out digits, down to 1M MACs: ~50 greedy steps
SEARCH = ["--recipe", "autoslim_digits", "--stages", "search", "--model.max-width", "0.5", "--model.widths", "0.25",
          "0.5", "--data.holdout", "60", "--stages.search.targets", "2e6", "1e6",
          "--stages.search.batch-size", "30"]  # fmt: skip


@pytest.fixture(scope="module")
def supernet(tmp_path_factory):
    """An untrained (seeded) 0.5x MobileNet v1 with calibrated BatchNorm: its candidates still score differently."""
    torch.manual_seed(0)
    net = create_supernet("mobilenet_v1", num_classes=10, max_width=0.5, widths=(0.25, 0.5), bn="calibrated")
    path = tmp_path_factory.mktemp("supernet") / "model.safetensors"
    save_supernet(net, path, stage="supernet")
    return path


def train(out, supernet, cache, *extra, processes=1, **popen):
    args = [*SEARCH, "--out-dir", str(out), "--from", str(supernet), "--data.cache-dir", str(cache), *extra]
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    env = subprocess_env(ACCELERATE_USE_CPU="true")
    launcher = launcher if processes > 1 else []
    return subprocess.Popen([PYTHON, *launcher, "-m", "dslim.train", *args], env=env, text=True, **popen)


def finish(proc):
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, (out or "")[-2000:] + (err or "")[-3000:]
    return out


def trace(run):
    return [json.loads(line) for line in (run / "search" / "trace.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, supernet, digits_cache):
    """One uninterrupted single-process search."""
    run = tmp_path_factory.mktemp("reference") / "run"
    finish(train(run, supernet, digits_cache, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return run


def test_search_records_subnets_under_each_target_with_a_consistent_path(reference):
    steps = [Step.from_json(s) for s in trace(reference)]
    assert [s["step"] for s in trace(reference)] == list(range(len(steps)))
    choices = create_supernet("mobilenet_v1", max_width=0.5, widths=(0.5,)).group_choices(12, 2)
    assert all(follows(a, b, choices) for a, b in zip(steps, steps[1:]))
    assert steps[-1].macs <= 1e6 < steps[-2].macs  # it stops once the last target is reached
    for step in steps[1:]:  # the chosen removal is the best-scoring candidate
        best = max(step.candidates, key=lambda c: (c[2].top1, -c[2].loss))
        assert (step.removed, step.score) == (best[0], best[2])
    found = json.loads((reference / "search" / "subnets.json").read_text())
    assert list(found) == ["autoslim-2M", "autoslim-1M"]
    for name, target in (("autoslim-2M", 2e6), ("autoslim-1M", 1e6)):
        first = next(s for s in steps if s.macs <= target)
        assert found[name]["macs"] == first.macs <= target and found[name]["subnet"] == first.subnet.to_json()
        assert found[name]["holdout_top1"] == first.score.top1 and found[name]["params"] > 0
    reference_rows = json.loads((reference / "search" / "reference.json").read_text())
    assert [r["subnet"] for r in reference_rows] == ["0.25", "0.5"]
    assert (reference / "search" / "search.png").stat().st_size > 0


def test_search_resumes_after_sigkill_to_the_same_trace(tmp_path, supernet, digits_cache, reference):
    run = tmp_path / "run"
    proc = train(run, supernet, digits_cache, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path, deadline = run / "search" / "trace.jsonl", time.time() + 600
    while not path.exists() or len(path.read_text().splitlines()) < 5:
        assert proc.poll() is None and time.time() < deadline, "the search ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "search" / "subnets.json").exists()
    with open(path, "a") as f:
        f.write('{"step": 99, "removed": "b3", "ma')  # a write torn by the kill
    killed_at = len(path.read_text().splitlines())
    out = finish(train(run, supernet, digits_cache, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    assert f"resuming after step {killed_at - 2}" in out
    assert trace(run) == trace(reference)
    assert json.loads((run / "search" / "subnets.json").read_text()) == json.loads(
        (reference / "search" / "subnets.json").read_text()
    )


def test_two_processes_search_the_same_path_as_one(tmp_path, supernet, digits_cache, reference):
    run = tmp_path / "run"
    out = finish(train(run, supernet, digits_cache, processes=2, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    assert "search: " in out
    assert trace(run) == trace(reference)


def test_search_refuses_to_run_without_a_held_out_split(tmp_path, digits_cache):
    done = subprocess.run([PYTHON, "-m", "dslim.train", "--recipe", "dsnet_digits", "--stages", "search",
                           "--stages.search.targets", "1e7", "--out-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, env=subprocess_env())  # fmt: skip
    assert done.returncode == 2 and "--data.holdout" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


def test_a_dsnet_supernet_is_searched_for_a_static_subnet(tmp_path, digits_cache):
    torch.manual_seed(0)
    net = create_supernet("ds_mobilenet_v1", num_classes=10)
    save_supernet(net, tmp_path / "ds.safetensors", stage="gate")
    run = tmp_path / "run"
    args = ["--recipe", "dsnet_digits", "--stages", "search", "--from", str(tmp_path / "ds.safetensors"),
            "--data.holdout", "60", "--stages.search.targets", "12e6", "6e6", "--stages.search.prefix", "static",
            "--out-dir", str(run), "--data.cache-dir", str(digits_cache)]  # fmt: skip
    done = subprocess.run([PYTHON, "-m", "dslim.train", *args], capture_output=True, text=True,
                          env={**subprocess_env(), "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads((run / "search" / "subnets.json").read_text())
    assert list(found) == ["static-12M", "static-6M"]
    for name, target in (("static-12M", 12e6), ("static-6M", 6e6)):
        channels = found[name]["subnet"]["channels"]
        assert found[name]["macs"] <= target
        assert all(c in net.groups[g].choices for g, c in channels.items())  # DS-Net's own stage widths
    assert os.path.getsize(run / "search" / "search.png") > 0
    assert measure(net, 32, Subnet.from_json(found["static-6M"]["subnet"])).macs == found["static-6M"]["macs"]


def _latency_table(tmp_path, supernet_path, layers=True):
    """A latency table of the test supernet with fixed per-layer fits (seeded, a different cost per layer, so latency
    does not simply follow MACs): the search's logic is tested without timing noise (`test_latency` times tables).
    Its `0.25` and `0.5` rows are "measured" 10% above the fits' estimate, as real rows differ from estimates."""
    import random

    from dslim.deploy.extraction import extract
    from dslim.deploy.latency import FORMAT, layer_shapes
    from dslim.deploy.latency_table import LatencyTable
    from dslim.io.artifacts import load_supernet

    net, _ = load_supernet(supernet_path)
    rng = random.Random(0)
    shapes = layer_shapes(extract(net, net.largest(), weights=False), 32)
    fits = {k: {"1": [rng.uniform(1e-3, 1e-2), rng.uniform(0.5, 2) * 1e-6, rng.uniform(0.5, 2) * 1e-4]} for k in shapes}
    table = {"format": FORMAT, "arch": net.arch, "input_size": 32, "batches": [1], "warmup": 0, "repeats": 0,
             "subnets": {}, "layers": {"fits": fits, "calibration": {"1": [1.5, 0.2]}}}  # fmt: skip
    estimates = LatencyTable(table)
    for name in ("0.25", "0.5"):
        subnet = net.resolve(name)
        ms = 1.1 * estimates.estimate(net, subnet, 1)
        table["subnets"][name] = {"subnet": subnet.to_json(), "macs": measure(net, 32, subnet).macs, "ms": {"1": ms}}
    if not layers:
        del table["layers"]
    path = tmp_path / "latency.json"
    path.write_text(json.dumps(table))
    return net, path


def test_latency_targets_record_subnets_under_their_latency_by_the_table(tmp_path, supernet, digits_cache):
    from dslim.deploy.latency_table import LatencyTable
    from dslim.models.sampling import smallest_of

    net, path = _latency_table(tmp_path, supernet)
    table = LatencyTable.read(path)
    choices = net.group_choices(12, 2)
    top, floor = table.latency(net.largest(), 1, net)[0], table.latency(smallest_of(choices), 1, net)[0]
    assert top > floor
    targets = [round(floor + f * (top - floor), 4) for f in (0.6, 0.3)]
    run = tmp_path / "run"
    args = [a for a in SEARCH if a not in ("2e6", "1e6")]
    args[args.index("--stages.search.targets") + 1 : 0] = ["2.9e6"]  # a MACs budget met early: latency leads
    args += ["--stages.search.targets-ms", *map(str, targets), "--stages.search.latency-table", str(path)]
    done = subprocess.run([PYTHON, "-m", "dslim.train", *args, "--out-dir", str(run), "--from", str(supernet),
                           "--data.cache-dir", str(digits_cache)], capture_output=True, text=True,
                          env={**subprocess_env(), "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [Step.from_json(s) for s in trace(run)]
    ms = [table.latency(s.subnet, 1, net)[0] for s in steps]
    found = json.loads((run / "search" / "subnets.json").read_text())
    assert list(found) == ["autoslim-2.9M", *(f"autoslim-{t:g}ms" for t in targets)]
    for entry, target in zip(list(found.values())[1:], targets):
        i = entry["step"]
        assert entry["subnet"] == steps[i].subnet.to_json() and entry["macs"] == steps[i].macs
        assert ms[i] <= target < min(ms[:i])  # the first subnet of the path under the budget, by the table
        assert entry["latency_ms"] == round(ms[i], 4)
    # the path stops at the first step that meets every budget, MACs and latency
    assert len(steps) - 1 == max(found["autoslim-2.9M"]["step"], found[f"autoslim-{targets[-1]:g}ms"]["step"])


def test_latency_targets_refuse_a_table_of_another_model(tmp_path, supernet, digits_cache):
    net, path = _latency_table(tmp_path, supernet, layers=False)
    base = [*SEARCH, "--out-dir", str(tmp_path / "run"), "--from", str(supernet), "--data.cache-dir", str(digits_cache)]
    table = json.loads(path.read_text())
    other, wider = tmp_path / "other.json", tmp_path / "wider.json"
    other.write_text(json.dumps({**table, "arch": "resnet18"}))
    doubled = {"channels": {g: 2 * c for g, c in net.largest().items()}, "blocks": None}  # a 1.0x supernet's largest
    wider.write_text(json.dumps({**table, "subnets": {"1.0": {**table["subnets"]["0.5"], "subnet": doubled}}}))
    refusals = [(other, "measured for resnet18"), (wider, "measured for another mobilenet_v1"),
                (path, "no per-layer table"), (tmp_path / "none.json", "cannot read latency table")]  # fmt: skip
    for file, message in refusals:
        done = subprocess.run([PYTHON, "-m", "dslim.train", *base, "--stages.search.targets-ms", "1",
                               "--stages.search.latency-table", str(file)], capture_output=True, text=True,
                              env=subprocess_env())  # fmt: skip
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "run" / "search").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
