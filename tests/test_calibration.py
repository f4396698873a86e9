"""BN recalibration: exact cumulative statistics, any width of a calibrated net from one checkpoint, DS-Net reset."""

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dslim.errors import UserError
from dslim.evaluation.accuracy import evaluate
from dslim.evaluation.calibration import has_statistics, recalibrate
from dslim.models import create_supernet
from dslim.nn import SlimBatchNorm2d

ROOT = Path(__file__).resolve().parent.parent


def _usnet():
    """A universally slimmable MobileNet v1 over [0.25, 0.5] with calibrated BatchNorm (no statistics yet)."""
    return create_supernet(
        "mobilenet_v1", num_classes=10, max_width=0.5, widths=(0.25, 0.5), width_range=(0.25, 0.5), bn="calibrated"
    )


def _batches(n, size=16, batch=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, size, size, generator=g) * 2 + 0.5, torch.zeros(batch, dtype=torch.long))
            for _ in range(n)]  # fmt: skip


def _stem_features(net, subnet, images):
    """What the stem BatchNorm sees: the stem conv sliced to the subnet's channels, computed by hand."""
    conv = net.stem[0]
    return F.conv2d(images, conv.weight[: subnet["stem"]], None, conv.stride, conv.padding)


@pytest.mark.parametrize("mode", ["calibrated", "private"])
def test_statistics_are_the_exact_cumulative_average(mode):
    torch.manual_seed(0)
    net = _usnet() if mode == "calibrated" else create_supernet("mobilenet_v1", num_classes=10, bn=mode)
    subnet = net.resolve("0.42" if mode == "calibrated" else "0.5")
    if mode == "private":  # DS-Net's BN reset must forget what training tracked
        net.stem[1].stats[subnet.key].running_mean.fill_(7.0)
        net.stem[1].stats[subnet.key].num_batches_tracked.fill_(1000)
    batches = _batches(3)
    recalibrate(net, {"x": subnet}, batches, num_batches=3)
    feats = [_stem_features(net, subnet, x) for x, _ in batches]
    stats = net.stem[1].stats[subnet.key]
    # equal batches: the mean is exactly the mean over all calibration features ...
    torch.testing.assert_close(stats.running_mean, torch.cat(feats).mean((0, 2, 3)), rtol=1e-5, atol=1e-5)
    # ... and the variance the mean of the per-batch unbiased variances (torch's momentum=None average)
    expected_var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(stats.running_var, expected_var, rtol=1e-5, atol=1e-5)
    assert int(stats.num_batches_tracked) == 3
    assert stats.running_mean.shape == (subnet["stem"],)


def test_num_batches_limits_and_state_is_restored():
    net = _usnet().eval()  # the released US-Net calibrated in eval mode and so changed nothing
    net.set_subnet(net.resolve("0.5"))
    bn = net.stem[1]
    subnet = net.resolve("0.3")
    assert not has_statistics(net, subnet)
    recalibrate(net, {"0.3": subnet}, iter(_batches(5)), num_batches=2)
    assert has_statistics(net, subnet)
    assert int(bn.stats[subnet.key].num_batches_tracked) == 2
    assert not net.training and net.subnet == net.resolve("0.5")
    assert all(m.momentum == 0.1 and not m.track for m in net.modules() if isinstance(m, SlimBatchNorm2d))
    with pytest.raises(UserError):
        recalibrate(net, {"0.3": subnet}, [], num_batches=2)
    with pytest.raises(UserError):
        recalibrate(net, {"0.3": subnet}, _batches(1), num_batches=0)


def _templates(g):
    return 2 * F.interpolate(torch.randn(10, 3, 4, 4, generator=g), size=32)


def _separable(templates, n, g):
    y = torch.randint(0, 10, (n,), generator=g)
    return templates[y] + 0.3 * torch.randn(n, 3, 32, 32, generator=g), y


def test_calibration_makes_an_untrained_width_accurate():
    """A US-Net trained by the sandwich rule, then a width never trained nor calibrated (0.42) is evaluated."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    templates = _templates(g)
    net = _usnet().train()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for step in range(20):
        x, y = _separable(templates, 32, g)
        opt.zero_grad()
        for w in ("0.5", "0.25", random.Random(step).choice(["0.3", "0.35", "0.45"])):
            with net.using(net.resolve(w)):
                F.cross_entropy(net(x), y).backward()
        opt.step()
    test = [_separable(templates, 50, g) for _ in range(4)]
    subnet = {"0.42": net.resolve("0.42")}
    # what the released calibration left behind: statistics allocated but never updated
    for bn in (m for m in net.modules() if isinstance(m, SlimBatchNorm2d)):
        bn.add_subnet(subnet["0.42"].key, bn.num_features if bn.group is None else subnet["0.42"][bn.group])
    wrong = evaluate(net, subnet, test, 32)[0]["top1"]
    recalibrate(net, subnet, [_separable(templates, 32, g) for _ in range(4)], num_batches=4)
    right = evaluate(net, subnet, test, 32)[0]["top1"]
    assert right >= 60.0 and right >= wrong + 40.0, (wrong, right)  # 86.5 vs 13.5 when written


WORKER = """
import sys
import torch
from accelerate import Accelerator
from dslim.evaluation.calibration import recalibrate
from dslim.evaluation.accuracy import evaluate
from test_calibration import _batches, _usnet, _labelled

acc = Accelerator(cpu=True)
torch.manual_seed(0)
net = _usnet()
batches = _batches(4)
mine = batches[:3] if acc.process_index == 0 else batches[3:]  # unequal counts: 3 and 1
recalibrate(net, {"a": net.resolve("0.42"), "b": net.resolve("0.5")}, mine, 10, acc)
assert acc.num_processes == 2
val = _labelled()
rows = evaluate(net, {"a": net.resolve("0.42")}, val[:2] if acc.process_index == 0 else val[2:], 16, acc)
if acc.process_index == 0:
    stats = {k: v for k, v in net.state_dict().items() if ".stats." in k}
    torch.save({"stats": stats, "rows": rows}, sys.argv[1])
acc.wait_for_everyone()
torch.distributed.destroy_process_group()  # else gloo's threads may abort the interpreter's exit
"""


def _labelled():
    """Three evaluation batches with random labels among 10 classes."""
    g = torch.Generator().manual_seed(5)
    return [(x, torch.randint(0, 10, (len(x),), generator=g)) for x, _ in _batches(3, seed=4, batch=8)]


def test_two_processes_equal_one_process_over_all_batches(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(tmp_path / "stats.pt")]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch.manual_seed(0)
    net = _usnet()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: deep BatchNorms over 4 values of 1x1 maps amplify rounding
    try:
        recalibrate(net, {"a": net.resolve("0.42"), "b": net.resolve("0.5")}, _batches(4), 10)
        saved = torch.load(tmp_path / "stats.pt")
        got, expected = saved["stats"], {k: v for k, v in net.state_dict().items() if ".stats." in k}
        assert got.keys() == expected.keys() and len(got) == 2 * 3 * 27
        for k in expected:
            torch.testing.assert_close(got[k], expected[k], rtol=1e-4, atol=1e-6, msg=k)
        # evaluation over unequal shards: (correct, total) sums reduced, equal to one process over all batches
        # (also on one thread: a near-chance model's argmax flips with the rounding of a different thread count)
        net.load_state_dict(got, strict=False)
        assert saved["rows"] == evaluate(net, {"a": net.resolve("0.42")}, _labelled(), 16)
    finally:
        torch.set_num_threads(threads)
