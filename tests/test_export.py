"""Physical export: every named subnet of every supernet, extracted, equals the supernet at that subnet."""

import pytest
import torch
from torch import nn

import dslim
from dslim.models import create_supernet, names
from dslim.models.complexity import measure
from dslim.nn import SlimBatchNorm2d, SlimConv2d, SlimLinear
from dslim.subnet import Subnet


def _randomize(net):
    """Non-default weights and BN statistics, so a wrong slice or wrong statistics shows. Weights are scaled by
    their fan-in, so that the activations of the deepest nets (ResNet-110) stay finite."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            scale = 0.2 if p.dim() == 1 else (2 / p[0].numel()) ** 0.5
            p.copy_(torch.randn(p.shape, generator=gen) * scale + (1.0 if p.dim() == 1 else 0.0))
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
    return net.eval()


def _kwargs(arch):
    """Several switchable widths for width-multiplier supernets; the others have their own subnets."""
    from dslim.models.registry import supernet_class
    from dslim.models.width import WidthSupernet

    if issubclass(supernet_class(arch), WidthSupernet):
        return {"bn": "switchable", "widths": (0.35, 0.6, 1.0)}
    return {}


@pytest.mark.parametrize("arch", names())
def test_extract_equals_supernet_for_every_named_subnet(arch):
    net = _randomize(create_supernet(arch, num_classes=7, **_kwargs(arch)))
    x = torch.randn(2, 3, 48, 48)
    for name, subnet in net.named_subnets().items():
        static = dslim.extract(net, subnet)
        assert not any(isinstance(m, (SlimConv2d, SlimLinear, SlimBatchNorm2d)) for m in static.modules())
        with torch.no_grad(), net.using(subnet):
            expected = net(x)
        torch.testing.assert_close(static(x), expected, atol=1e-5, rtol=1e-5, msg=f"{arch} {name}")
        # physically narrower: exactly the sliced parameters, as the complexity model counts them
        assert sum(p.numel() for p in static.parameters()) == measure(net, 48, subnet).params


def test_subnets_differ_and_stats_are_per_subnet():
    net = _randomize(create_supernet("mobilenet_v1", num_classes=5, bn="private", widths=(0.5, 1.0)))
    a, b = dslim.extract(net, net.resolve("0.5")), dslim.extract(net, net.resolve("1.0"))
    assert a.stem[0].weight.shape[0] < b.stem[0].weight.shape[0]
    stats = net.stem[1].stats
    assert not torch.equal(stats[net.resolve("0.5").key].running_mean, stats[net.resolve("1.0").key].running_mean[:16])
    torch.testing.assert_close(a.stem[1].running_mean, stats[net.resolve("0.5").key].running_mean)


def test_save_and_load_subnet_roundtrip(tmp_path):
    net = _randomize(create_supernet("mobilenet_v2", num_classes=4, bn="private", widths=(0.5, 1.0)))
    subnet = net.resolve("0.5")
    path = tmp_path / "m.safetensors"
    dslim.save_subnet(net, subnet, path, input_size=48)
    loaded = dslim.load_subnet(path)
    assert type(loaded).__name__ == "MobileNetV2" and loaded.input_size == 48
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad(), net.using(subnet):
        torch.testing.assert_close(loaded(x), net(x), atol=1e-5, rtol=1e-5)
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


def test_a_pruned_head_exports():
    """With `prune_head` the last 1x1 conv, its pool and the classifier's input follow the `head` group."""
    net = create_supernet("mnasnet", num_classes=5, bn="private", widths=(0.5,), prune_head=True)
    subnet = Subnet.of({**net.resolve("0.5"), "head": 424})
    net.name_subnets({"pruned": subnet})
    _randomize(net)
    static = dslim.extract(net, subnet)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), net.using(subnet):
        torch.testing.assert_close(static(x), net(x), atol=1e-5, rtol=1e-5)
    assert static.classifier.in_features == static.head[0].out_channels == 424


def test_dropped_blocks_are_gone_from_the_export():
    net = _randomize(create_supernet("resnet18", num_classes=3, bn="private", widths=(1.0,)))
    blocks = tuple(i not in (1, 5) for i in range(len(net.blocks)))
    subnet = Subnet.of(dict(net.largest().items()), blocks)
    net.train()
    with torch.no_grad(), net.using(subnet):  # allocate this subnet's statistics
        net(torch.randn(4, 3, 32, 32))
    net.eval()
    static = dslim.extract(net, subnet)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), net.using(subnet):
        torch.testing.assert_close(static(x), net(x), atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in static.parameters()) == measure(net, 32, subnet).params
    assert isinstance(static.features[1].shortcut, nn.Identity) and not hasattr(static.features[1], "body")


def test_uncalibrated_subnet_cannot_be_exported():
    net = create_supernet("mobilenet_v1", bn="calibrated", widths=(1.0,), width_range=(0.25, 1.0))
    with pytest.raises(dslim.errors.UserError, match="bn_recalibration"):
        dslim.extract(net, net.uniform(0.5))
