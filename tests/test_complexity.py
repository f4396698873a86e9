"""The exact MACs model reproduces the published tables; its differentiable form agrees with it."""

import math

import pytest
import torch

from dslim.models import create_supernet
from dslim.models.complexity import MacsModel, measure, route_macs
from dslim.subnet import Subnet

# reference/dsnet.md: the 14 uniform subnets of ds_mobilenet_v1, millions of MAdds
DSNET_UNIFORM = [132.9, 152.9, 175.2, 199.6, 226.2, 255.1, 286.2, 319.4, 354.9, 392.6, 432.5, 474.6, 518.9, 565.4]

# slimmable-networks model zoo (README), "FLOPs" = MACs. The S-Net table rounds to the nearest million
# (or 0.1 G); the US-Net spectrum tables truncate to whole millions.
SNET = {
    "mobilenet_v1": {1.0: 569, 0.75: 325, 0.5: 150, 0.25: 41},
    "mobilenet_v2": {1.0: 301, 0.75: 209, 0.5: 97, 0.35: 59},
    "resnet50": {1.0: 4100, 0.75: 2300, 0.5: 1100, 0.25: 278},
}
US_MBV1 = [
    568,
    543,
    517,
    490,
    466,
    443,
    421,
    389,
    366,
    345,
    325,
    306,
    287,
    267,
    249,
    232,
    217,
    201,
    177,
    162,
    149,
    136,
    124,
    114,
    100,
    89,
    80,
    71,
    64,
    48,
    41,
]  # widths 1.0, 0.975, ..., 0.25
US_MBV2 = [
    300,
    299,
    284,
    274,
    269,
    268,
    254,
    235,
    222,
    213,
    209,
    185,
    173,
    165,
    161,
    161,
    151,
    150,
    106,
    100,
    97,
    96,
    88,
    88,
    80,
    80,
    59,
]  # widths 1.0, 0.975, ..., 0.35


def test_dsnet_table():
    net = create_supernet("ds_mobilenet_v1")
    for r, ref in enumerate(DSNET_UNIFORM):
        macs = measure(net, 224, net.resolve(f"uniform-{r}")).macs / 1e6
        assert abs(macs - ref) / ref < 0.005, (r, macs, ref)
    assert measure(net, 224, net.resolve("smallest")).macs == measure(net, 224, net.resolve("uniform-0")).macs


@pytest.mark.parametrize("arch", sorted(SNET))
def test_snet_tables(arch):
    widths = tuple(sorted(SNET[arch]))
    net = create_supernet(arch, widths=widths, bn="switchable")
    for w, ref in SNET[arch].items():
        macs = measure(net, 224, net.resolve(repr(w))).macs / 1e6
        if ref >= 1000:  # published in G with one decimal
            assert round(macs / 1000, 1) * 1000 == ref, (w, macs)
        else:
            assert round(macs) == ref, (w, macs)


@pytest.mark.parametrize(("arch", "lo", "table"), [("mobilenet_v1", 0.25, US_MBV1), ("mobilenet_v2", 0.35, US_MBV2)])
def test_usnet_spectrum(arch, lo, table):
    net = create_supernet(arch, widths=(1.0,), width_range=(lo, 1.0), bn="calibrated")
    for i, ref in enumerate(table):
        w = round(1.0 - 0.025 * i, 3)
        assert math.floor(measure(net, 224, net.uniform(w)).macs / 1e6) == ref, w


def test_whole_supernet_params():
    net = create_supernet("ds_mobilenet_v1")  # with its 4-route gate (4 x 66 weights), as reference/dsnet.md
    assert sum(p.numel() for p in net.parameters()) == 7_676_204
    assert measure(net, 224, net.largest()).params == 7_676_204 - 4 * 66  # a static subnet runs no gate
    assert measure(create_supernet("resnet50", bn="private"), 224).params == 25_557_032  # torchvision's ResNet-50


def test_a_pruned_head_keeps_the_tables_and_costs_its_channels():
    from dslim.config import ModelConfig
    from dslim.errors import UserError
    from dslim.models import from_config

    plain = create_supernet("mobilenet_v2", widths=(0.35, 1.0), bn="calibrated")
    pruned = create_supernet("mobilenet_v2", widths=(0.35, 1.0), bn="calibrated", prune_head=True)
    for w in ("0.35", "1.0"):  # every width multiplier keeps the head at 1280, as the zoo
        assert measure(pruned, 224, pruned.resolve(w)).macs == measure(plain, 224, plain.resolve(w)).macs
    half = Subnet.of({**pruned.largest(), "head": 640})
    # 640 channels fewer out of the head conv (from 320, at 7x7), into the pool (7x7) and into the classifier
    assert measure(pruned, 224).macs - measure(pruned, 224, half).macs == 640 * (320 * 49 + 49 + 1000)
    assert float(MacsModel(pruned, 224).macs(dict(half.items()))) == measure(pruned, 224, half).macs
    with pytest.raises(UserError, match="--model.prune-head: resnet18 keeps no layer at a fixed width"):
        from_config(ModelConfig(arch="resnet18", prune_head=True))


def _random_subnet(net, gen):
    return Subnet.of(
        {
            g: int(torch.randint(1, grp.max + 1, (), generator=gen))
            if grp.choices is None
            else grp.choices[int(torch.randint(len(grp.choices), (), generator=gen))]
            for g, grp in net.groups.items()
        }
    )


@pytest.mark.parametrize("arch", ["ds_mobilenet_v1", "mobilenet_v1", "mobilenet_v2", "resnet18"])
def test_polynomial_equals_exact_on_hard_choices(arch):
    net = create_supernet(arch, bn="calibrated")
    model = MacsModel(net, 64)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        s = _random_subnet(net, gen)
        assert float(model.macs(dict(s.items()))) == measure(net, 64, s).macs


def test_expected_macs_is_differentiable_and_exact_for_one_hot():
    net = create_supernet("ds_mobilenet_v1")
    model = MacsModel(net, 224)
    choices = {g: grp.choices for g, grp in net.groups.items()}
    s = net.resolve("uniform-5")
    logits = {
        g: torch.full((len(c),), -1e4).index_fill(0, torch.tensor(c.index(s[g])), 1e4).requires_grad_()
        for g, c in choices.items()
    }
    probs = {g: v.softmax(-1) for g, v in logits.items()}
    macs = model.expected(probs, choices)
    assert float(macs.detach()) == pytest.approx(measure(net, 224, s).macs, rel=1e-6)
    soft = {g: torch.zeros(len(c), requires_grad=True) for g, c in choices.items()}
    model.expected({g: v.softmax(-1) for g, v in soft.items()}, choices).backward()
    assert soft["s3"].grad.abs().sum() > 0


def test_route_macs_onehot():
    net = create_supernet("ds_mobilenet_v1")
    routes = [net.resolve(f"uniform-{r}") for r in range(4)]
    table = route_macs(net, routes, 224)
    onehot = torch.eye(4)[[2, 0]]
    assert torch.equal(onehot @ table, torch.stack([table[2], table[0]]))
    assert abs(table[3] / 1e6 - DSNET_UNIFORM[3]) < 0.1


def test_block_skipping_costs_nothing():
    net = create_supernet("resnet18", bn="calibrated")
    full = measure(net, 64, net.largest())
    blocks = tuple(i != 1 for i in range(len(net.blocks)))
    skipped = measure(net, 64, Subnet.of(dict(net.largest().items()), blocks))
    body = [t for t in full.terms if t.block == 1]
    assert full.macs - skipped.macs == sum(t.macs for t in body) > 0
    keep = torch.tensor([float(b) for b in blocks])
    assert float(MacsModel(net, 64).macs(dict(net.largest().items()), keep)) == skipped.macs
