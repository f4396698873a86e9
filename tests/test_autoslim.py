"""AutoSlim's pieces: the greedy step, targets on the path, channel groups in bins (residual ties), and the published
AutoSlim configurations profiled through channel files."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import subprocess_env

from dslim.methods.autoslim import Score, Step, greedy_slim, greedy_step, one_bin_less, reached, target_name
from dslim.methods.sandwich import SandwichConfig, step_subnets
from dslim.models import create_supernet
from dslim.models.complexity import MacsModel, measure
from dslim.models.mobilenet_v2 import InvertedResidual
from dslim.models.resnet import Block
from dslim.models.sampling import in_bins
from dslim.nn import SlimConv2d
from dslim.subnet import Subnet, make_divisible

CHOICES = {"a": (8, 16, 24), "b": (4, 8), "c": (10, 20, 30)}


def scorer(penalty):
    """A hand-built scorer: top-1 falls by `penalty[g]` per channel group `g` below its widest choice."""

    def score(subnets):
        return [Score(100.0 - sum(penalty[g] * (CHOICES[g].index(max(CHOICES[g])) - CHOICES[g].index(c))
                                  for g, c in s.items()), 1.0) for s in subnets]  # fmt: skip

    return score


def macs(subnet):
    return subnet["a"] * subnet["b"] + subnet["c"]


def test_greedy_step_removes_the_bin_the_scorer_says_hurts_least():
    start = Subnet.of({"a": 24, "b": 8, "c": 30})
    step = greedy_step(start, CHOICES, scorer({"a": 3.0, "b": 1.0, "c": 2.0}), macs)
    assert step.removed == "b" and step.subnet == Subnet.of({"a": 24, "b": 4, "c": 30})
    assert [g for g, _, _ in step.candidates] == ["a", "b", "c"]
    assert [m for _, m, _ in step.candidates] == [16 * 8 + 30, 24 * 4 + 30, 24 * 8 + 20]
    assert step.macs == 24 * 4 + 30 and step.score == Score(99.0, 1.0)
    # equal top-1: the lower loss wins; then the first group
    tie = greedy_step(start, CHOICES, lambda s: [Score(50, 2.0), Score(50, 1.5), Score(50, 1.5)], macs)
    assert tie.removed == "b"
    assert greedy_step(start, CHOICES, lambda s: [Score(50, 1.0)] * 3, macs).removed == "a"
    # a group at its narrowest is not a candidate; nothing left to remove: None
    assert set(one_bin_less(step.subnet, CHOICES)) == {"a", "c"}
    assert greedy_step(Subnet.of({"a": 8, "b": 4, "c": 10}), CHOICES, scorer({}), macs) is None


def test_greedy_path_records_the_first_subnet_at_or_below_each_target():
    start = Subnet.of({"a": 24, "b": 8, "c": 30})
    penalty = {"a": 3.0, "b": 5.0, "c": 1.0}
    seen = []
    path = greedy_slim([Step(start, macs(start), Score(100, 1))], CHOICES, scorer(penalty), macs, 100, seen.append)
    assert path[1:] == seen
    # c is cheapest to lose, then a, then b: the path follows the scorer
    assert [s.removed for s in path[1:]] == ["c", "c", "a", "a"]
    assert [s.macs for s in path] == [222, 212, 202, 138, 74]
    found = reached(path, [210, 150, 100, 10])
    assert found == {210: 2, 150: 3, 100: 4}  # 10 is never reached: the path stops at its first step <= 100
    assert all(path[i].macs <= t for t, i in found.items())
    assert target_name("autoslim", 300e6) == "autoslim-300M" and target_name("autoslim", 3.0e9) == "autoslim-3G"
    assert target_name("x", 1.5e6) == "x-1.5M"


def test_step_trace_lines_round_trip():
    step = greedy_step(Subnet.of({"a": 24, "b": 8, "c": 30}), CHOICES, scorer({"a": 1, "b": 2, "c": 3}), macs)
    assert Step.from_json(json.loads(json.dumps(step.to_json(3)))) == step


def _residual_pairs(net):
    """(input group, output group) of every residual sum of `net`."""
    pairs = []
    for m in net.modules():
        convs = [c for c in getattr(m, "body", []) if isinstance(c, SlimConv2d)]
        if isinstance(m, InvertedResidual) and m.residual:
            pairs.append((convs[0].in_group, convs[-1].out_group))
        if isinstance(m, Block) and isinstance(m.shortcut, torch.nn.Identity):
            pairs.append((convs[0].in_group, convs[-1].out_group))
    return pairs


@pytest.mark.parametrize(
    ("arch", "max_width", "residuals", "inner"),
    [("mobilenet_v2", 1.5, 10, 16), ("mobilenet_v1", 1.0, 0, 0), ("resnet50", 1.0, 12, 32)],
)
def test_bins_respect_residual_ties_and_every_inner_width_is_its_own_group(arch, max_width, residuals, inner):
    net = create_supernet(arch, num_classes=10, max_width=max_width, widths=(max_width,), bn="calibrated")
    pairs = _residual_pairs(net)
    assert len(pairs) == residuals and all(a == b for a, b in pairs)  # a residual sum joins one group
    inner_groups = [g for g in net.groups if ".expand" in g or ".mid" in g]
    assert len(inner_groups) == inner  # one per expansion (MBv2) or per inner conv (ResNet bottleneck)
    choices = net.group_choices(12, 2)
    for g, grp in net.groups.items():
        rule = (lambda c: max(1, int(c))) if arch == "resnet50" else make_divisible
        assert choices[g] == tuple(sorted({rule(grp.max * k / 12) for k in range(2, 13)})), g
    # random subnets in bins run (a residual sum of two widths would fail) and cost what the MACs model says
    model = MacsModel(net, 32)
    rng = np.random.default_rng(0)
    for _ in range(3):
        subnet = in_bins(net, rng, 12, 2)
        with torch.no_grad(), net.using(subnet, train=True):
            assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        assert model.exact(subnet) == measure(net, 32, subnet).macs


def test_mobilenet_v2_bins_are_mmrazors_ratios():
    net = create_supernet("mobilenet_v2", max_width=1.5, widths=(1.5,), bn="calibrated")
    choices = net.group_choices(12, 2)
    assert choices["stem"] == (8, 16, 24, 32, 40, 48)  # 48 x i/12, i = 2..12, multiples of 8
    assert choices["b1.expand"] == (24, 40, 48, 64, 72, 88, 96, 112, 120, 136, 144)  # 144 x i/12, rounded to 8


def test_sandwich_with_per_group_bins_trains_the_bins_corners():
    net = create_supernet("mobilenet_v2", max_width=1.5, widths=(0.25, 1.5), bn="calibrated")
    cfg = SandwichConfig(rule="sandwich", sampler="groups", num_random=2)
    passes = step_subnets(net, cfg, np.random.default_rng(0), 12, 2)
    assert [n for n, _ in passes] == ["largest", "random", "random", "smallest"]
    choices = net.group_choices(12, 2)
    assert passes[-1][1] == Subnet.of({g: c[0] for g, c in choices.items()})  # narrower than the 0.25 width
    assert all(s[g] in choices[g] for _, s in passes for g in choices)


# -- the published AutoSlim configurations, as channel files, profile to the published MACs ----------------------
# The original's channel lists (slimmable_networks apps/autoslim_*.yml), classes last.
MBV2 = {  # stem; block 0's output; (expansion, output) of blocks 1..16; the last 1x1 conv
    "207M": [8, 8, 96, 16, 96, 16, 96, 24, 144, 24, 144, 24, 144, 48, 288, 48, 288, 48, 288, 48, 288, 64, 432, 64, 432,
             64, 648, 176, 720, 176, 720, 176, 1440, 280, 1920, 1000],
    "305M": [8, 8, 96, 16, 96, 16, 96, 24, 144, 24, 144, 24, 144, 56, 288, 56, 288, 56, 288, 56, 288, 96, 432, 96, 432,
             96, 864, 240, 1440, 240, 960, 240, 1440, 480, 1920, 1000],
    "505M": [32, 16, 144, 24, 176, 24, 192, 48, 240, 48, 144, 48, 264, 88, 288, 88, 336, 88, 432, 88, 576, 144, 576,
             144, 648, 144, 864, 240, 1440, 240, 1440, 240, 1440, 480, 1920, 1000],
}  # fmt: skip
MBV1 = {  # stem and the 13 blocks' outputs (of a 1.5x MobileNet v1)
    "150M": [16, 32, 48, 48, 88, 88, 224, 176, 224, 368, 320, 224, 744, 744, 1000],
    "325M": [16, 32, 48, 64, 112, 184, 320, 368, 320, 416, 464, 560, 1128, 1128, 1000],
    "572M": [24, 64, 128, 144, 232, 232, 560, 464, 512, 464, 560, 560, 1128, 1128, 1000],
}
R50 = {  # stem; per stage its output, then (inner, inner, output) of each block
    "570M": [24, 72, 8, 16, 72, 16, 16, 72, 8, 8, 72, 240, 16, 24, 240, 16, 24, 240, 16, 16, 240, 16, 24, 240, 704, 72,
             72, 704, 48, 72, 704, 48, 72, 704, 72, 72, 704, 48, 48, 704, 48, 48, 704, 1680, 280, 240, 1680, 120, 200,
             1680, 280, 280, 1680, 1000],
    "1000M": [32, 72, 16, 16, 72, 16, 16, 72, 8, 8, 72, 280, 24, 40, 280, 16, 24, 280, 16, 24, 280, 24, 40, 280, 880,
              72, 72, 880, 72, 96, 880, 72, 72, 880, 72, 72, 880, 48, 72, 880, 168, 96, 880, 2016, 360, 280, 2016, 320,
              360, 2016, 480, 440, 2016, 1000],
    "2006M": [40, 120, 16, 16, 120, 24, 24, 120, 16, 24, 120, 440, 48, 72, 440, 32, 48, 440, 40, 56, 440, 64, 72, 440,
              1024, 168, 168, 1024, 96, 144, 1024, 120, 168, 1024, 120, 144, 1024, 120, 144, 1024, 256, 256, 1024,
              2016, 512, 512, 2016, 480, 480, 2016, 512, 512, 2016, 1000],
    "3005M": [48, 192, 16, 16, 192, 56, 56, 192, 24, 40, 192, 512, 88, 112, 512, 64, 104, 512, 104, 112, 512, 80, 128,
              512, 1024, 240, 216, 1024, 144, 216, 1024, 192, 192, 1024, 144, 240, 1024, 240, 256, 1024, 256, 256,
              1024, 2016, 512, 512, 2016, 480, 512, 2016, 512, 512, 2016, 1000],
}  # fmt: skip
# (MACs in millions to 0.1, params in millions to 0.01): the papers' MACs, mmrazor's params for MobileNet v2
PUBLISHED = {
    "mobilenet_v2": {"207M": (206.9, 4.13), "305M": (305.2, 5.77), "505M": (505.0, 6.50)},
    "mobilenet_v1": {"150M": (149.9, 1.89), "325M": (324.8, 4.00), "572M": (572.1, 4.66)},
    "resnet50": {"570M": (570.1, 7.42), "1000M": (999.9, 13.34), "2006M": (2006.1, 20.61), "3005M": (3004.6, 23.19)},
}


def _channels(net, values):
    """A channel list of the original as dslim's channel groups, checking that tied layers agree."""
    values, out = list(values), {}

    def take(group):
        c = values.pop(0)
        assert out.setdefault(group, c) == c, group
        return c

    if net.arch == "mobilenet_v1":
        for g in net.groups:
            take(g)
    elif net.arch == "mobilenet_v2":
        take("stem")
        for i, (_, g_mid, g_out, *_) in enumerate(net.plan):
            if i:
                take(g_mid)
            take(g_out)
        assert values.pop(0) == net.head[0].out_channels  # the last 1x1 conv is not pruned
    else:
        take("stem")
        blocks = iter(range(16))
        for s, depth in enumerate((3, 4, 6, 3)):
            take(f"s{s}")
            for b in (next(blocks) for _ in range(depth)):
                take(f"b{b}.mid1"), take(f"b{b}.mid2"), take(f"s{s}")
    assert values == [1000]
    return Subnet.of({g: out[g] for g in net.groups})


@pytest.mark.parametrize(("recipe", "lists"), [("autoslim_mbv2", MBV2), ("autoslim_mbv1", MBV1),
                                               ("autoslim_resnet50", R50)])  # fmt: skip
def test_published_autoslim_configs_profile_to_the_published_macs(tmp_path, recipe, lists):
    from dslim.io.channels import write_channels
    from dslim.models import from_config
    from dslim.recipes import load

    net = from_config(load(recipe).model)
    files = []
    for i, (name, values) in enumerate(lists.items()):
        files.append(tmp_path / f"as-{name}.{'yaml' if i % 2 else 'json'}")  # both formats
        write_channels(files[-1], net, _channels(net, values))
    done = subprocess.run([sys.executable, "-m", "dslim.profile", "--recipe", recipe, "--json", "--channels", *files],
                          capture_output=True, text=True, env=subprocess_env())  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [r["subnet"] for r in rows] == [f"as-{n}" for n in lists]
    for row, (macs_m, params_m) in zip(rows, PUBLISHED[net.arch].values()):
        assert (round(row["macs"] / 1e6, 1), round(row["params"] / 1e6, 2)) == (macs_m, params_m), row
