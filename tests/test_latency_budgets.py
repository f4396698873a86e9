"""Latency budgets in every method: the per-layer table as a differentiable function of channels (DMCP's expected
latency), the latency loss's gradient, DS-Net's gate penalty in ms, and channels rounded to a hardware multiple.

The tables here are fixed per-layer fits (seeded, a different cost per layer, so latency does not simply follow
MACs), not timings: what is tested is the arithmetic, never a machine's speed.
"""

import random

import numpy as np
import pytest
import torch

from dslim.deploy.extraction import extract
from dslim.deploy.latency import FORMAT, layer_shapes, random_subnet
from dslim.deploy.latency_table import ExpectedLatency, LatencyTable
from dslim.methods.dmcp import flops_loss, latency_loss
from dslim.methods.dmcp_chains import MarkovChannels, make_chains
from dslim.models import create_supernet
from dslim.subnet import ChannelGroup, Subnet

SIZE = 32


def fixed_table(net, seed: int = 0) -> LatencyTable:
    """A per-layer table of `net` at batch 1 with seeded fits and calibration."""
    rng = random.Random(seed)
    shapes = layer_shapes(extract(net, net.largest(), weights=False), SIZE)
    fits = {k: {"1": [rng.uniform(1e-3, 1e-2), rng.uniform(0.5, 2) * 1e-6, rng.uniform(0.5, 2) * 1e-4]} for k in shapes}
    return LatencyTable({"format": FORMAT, "arch": net.arch, "input_size": SIZE, "batches": [1], "subnets": {},
                         "layers": {"fits": fits, "calibration": {"1": [1.5, 0.2]}}})  # fmt: skip


@pytest.fixture(scope="module")
def mbv2():
    """A small MobileNet v2 (DMCP's base) with its expected latency."""
    torch.manual_seed(0)
    net = create_supernet("mobilenet_v2", num_classes=10, max_width=0.5, widths=(0.5,), bn="calibrated")
    table = fixed_table(net)
    return net, table, ExpectedLatency(table, net, 1)


def test_expected_latency_equals_the_tables_estimate_at_any_subnet(mbv2):
    net, table, latency = mbv2
    rng = random.Random(1)
    for subnet in [net.largest(), *(random_subnet(net, rng, 12, 1) for _ in range(3))]:
        assert float(latency(dict(subnet.items()))) == pytest.approx(table.estimate(net, subnet, 1), rel=1e-12)


def test_latency_loss_gradient_matches_finite_differences(mbv2):
    """DMCP's latency term, d loss / d alpha through the expected channels, against central differences."""
    net, _, latency = mbv2
    chains = MarkovChannels(make_chains(net, 0.1, 0.5, 0.1)).double()
    with torch.no_grad():
        chains.alpha.normal_(generator=torch.Generator().manual_seed(0))
    top = dict(net.largest().items())
    rate = 1e9 / float(latency(top))  # any MACs-per-ms rate: the loss is a function of alpha all the same
    low = float(latency({c.group: c.keep for c in chains.chains}))
    target = low + 0.3 * (float(latency(top)) - low)

    def loss() -> torch.Tensor:
        return latency_loss(latency(chains.expected_channels()), target, rate)

    value = loss()
    assert float(value.detach()) != 0.0  # outside the band: a gradient to check
    value.backward()
    grad = chains.alpha.grad.clone()
    eps = 1e-6
    for i in np.random.default_rng(0).choice(len(grad), 6, replace=False):
        with torch.no_grad():
            chains.alpha[i] += eps
            up = float(loss())
            chains.alpha[i] -= 2 * eps
            down = float(loss())
            chains.alpha[i] += eps
        assert float(grad[i]) == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-9)
    # the latency loss is the FLOPs loss at the MACs the latency converts to
    ms = torch.tensor(7.0, dtype=torch.float64)
    assert float(latency_loss(ms, 5.0, 2e7)) == float(flops_loss(ms * 2e7, 5.0 * 2e7))


def test_gate_penalty_in_ms_by_hand():
    """Each route's penalty is (its ms / unit)^2; the default unit gives the widest route its MAdds penalty."""
    from dslim.methods.gate import GateConfig, GateTraining

    net = create_supernet("ds_mobilenet_v1", num_classes=10)
    ms = torch.tensor([2.0, 2.5, 2.6, 4.0])
    macs = net.route_macs(SIZE).double()
    training = GateTraining(GateConfig(), net, SIZE, ms)
    unit = 4.0 * 1e9 / float(macs[-1])
    torch.testing.assert_close(training.costs, ms.double() / unit)
    assert float(training.costs[-1]) == pytest.approx(float(macs[-1]) / 1e9)  # as its MAdds would be
    onehot = torch.eye(4)[[0, 3, 3, 1]].requires_grad_(True)
    penalty = ((onehot @ training.costs.float()) ** 2).mean()
    penalty.backward()
    chosen = training.costs.float()[[0, 3, 3, 1]]
    torch.testing.assert_close(onehot.grad, 2 * chosen[:, None] * training.costs.float()[None, :] / 4)
    assert torch.equal(GateTraining(GateConfig(latency_unit=2.0), net, SIZE, ms).costs, ms.double() / 2.0)
    torch.testing.assert_close(GateTraining(GateConfig(), net, SIZE).costs, net.route_macs(SIZE) / 1e9)


def test_channels_rounded_to_a_hardware_multiple():
    group = ChannelGroup("g", 100, min=4)
    assert [group.divisible(c, 8) for c in (4, 11, 12, 13, 59, 95, 97, 99, 100)] == [8, 8, 16, 16, 56, 96, 96, 100, 100]
    assert group.divisible(37, 1) == 37 and ChannelGroup("c", 64, (16, 37)).divisible(37, 8) == 37
    assert ChannelGroup("small", 6, min=1).divisible(3, 8) == 6  # no multiple in range: the full width
    net = create_supernet("resnet18", num_classes=10, widths=(1.0,), bn="calibrated")
    choices = net.group_choices(12, 1, divisor=8)
    for g, counts in choices.items():
        assert all(c % 8 == 0 or c == net.groups[g].max for c in counts) and max(counts) == net.groups[g].max
    assert choices != net.group_choices(12, 1)  # ResNets' own rule (int) leaves counts that are not multiples
    odd = Subnet.of({g: max(1, grp.max // 3 + 1) for g, grp in net.groups.items()})
    rounded = net.divisible(odd, 8)
    net.check(rounded)
    assert all(abs(rounded[g] - odd[g]) <= 4 for g in odd) and all(c % 8 == 0 for c in rounded.values())


def test_dmcp_samples_at_a_hardware_multiple():
    from dslim.models.complexity import MacsModel
    from dslim.stages.sample import SampleConfig, direct_samples

    torch.manual_seed(0)
    net = create_supernet("mobilenet_v2", num_classes=10, max_width=0.5, widths=(0.5,), bn="calibrated")
    chains = MarkovChannels(make_chains(net, 0.1, 0.5, 0.1))
    with torch.no_grad():
        chains.alpha.fill_(1.0)
    macs = MacsModel(net, SIZE)
    with torch.no_grad():
        target = float(macs.macs(chains.expected_channels()))
    found, _ = direct_samples(chains, macs, target, SampleConfig(count=3, tolerance=0.05), np.random.default_rng(0),
                              net, 8)  # fmt: skip
    assert len(found) == 3
    for channels, _ in found:
        assert all(c % 8 == 0 or c == net.groups[g].max for g, c in channels.items())
        assert abs(macs.exact(Subnet.of(channels)) - target) <= 0.05 * target
