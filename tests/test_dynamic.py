"""DS-Net dynamic inference: grouped by route, equal to each image run alone at its routed subnet."""

import torch

from dslim.models import create_supernet


def _dsnet_with_mixed_routes(dtype=torch.float64):
    """A DS-Net whose every route has BN statistics estimated on one batch, as a BN reset does.

    float64 by default: what the tests compare is the grouping and slicing, not float32 convolution algorithms of a
    batch of 16 against a batch of 1 (which differ by up to ~3e-5 on logits of magnitude 10).
    """
    torch.manual_seed(0)
    net = create_supernet("ds_mobilenet_v1", num_classes=10).to(dtype)
    batch = torch.randn(32, 3, 64, 64, dtype=dtype)
    for m in net.modules():
        if hasattr(m, "stats"):
            m.momentum = None  # cumulative: one batch gives exactly its statistics
    net.train()
    with torch.no_grad():
        for route in net.routes():
            with net.using(route):
                net(batch)
    return net.eval()


def _spread_routes(net, x):
    """Fit the gate so the batch's images go to chosen routes, every route used."""
    with torch.no_grad(), net.using(net.routes()[0]):
        squeezed = net.prefix(x)[1].flatten(1)
    target = torch.nn.functional.one_hot(torch.arange(len(x)) % 4, 4).to(x.dtype) * 10
    weight = (torch.linalg.pinv(squeezed) @ target).T  # the minimum-norm exact fit (16 images, 66 inputs)
    net.gate_block.gate.weight.data.copy_(weight.view_as(net.gate_block.gate.weight))


def test_dynamic_equals_each_image_alone_at_its_route():
    net = _dsnet_with_mixed_routes()
    x = torch.randn(16, 3, 64, 64, dtype=torch.float64)
    _spread_routes(net, x)
    out, route = net.forward_routed(x)
    assert len(route.unique()) > 1, "the test needs images on several routes"
    for i in range(len(x)):
        with torch.no_grad(), net.using(net.routes()[route[i]]):
            torch.testing.assert_close(out[i : i + 1], net(x[i : i + 1]), atol=1e-5, rtol=1e-5)
        single, r1 = net.forward_routed(x[i : i + 1])  # a batch of one takes the same path
        assert r1.item() == route[i].item()
        torch.testing.assert_close(single, out[i : i + 1], atol=1e-5, rtol=1e-5)


def test_dynamic_runs_narrower_tensors():
    net = _dsnet_with_mixed_routes()
    x = torch.randn(16, 3, 64, 64, dtype=torch.float64)
    _spread_routes(net, x)
    widths = []
    hook = net.classifier.register_forward_hook(lambda m, a, y: widths.append(a[0].shape[1]))
    _, route = net.forward_routed(x)
    hook.remove()
    assert sorted(widths) == sorted(736 + 32 * r for r in route.unique().tolist())
    assert net.subnet == net.largest()  # the active subnet is left as it was


def test_dynamic_export_holds_each_route_as_a_static_network(tmp_path):
    """Each route is a plain network holding its own sliced, contiguous weights, equal to the supernet at that
    route; the prefix they share lives once; saved and loaded, the model routes as the supernet does."""
    import dslim
    from dslim.deploy.extraction import TORCH, Pruned, RoutedNet, extract_dynamic
    from dslim.deploy.runtime import execute

    net = _dsnet_with_mixed_routes()
    x = torch.randn(8, 3, 64, 64, dtype=torch.float64)
    _spread_routes(net, x)
    expected, route = net.forward_routed(x)
    routed = extract_dynamic(net).double()
    assert len(routed.nets) == len(net.routes())
    for r, subnet in enumerate(net.routes()):
        static = routed.nets[subnet.key]
        layers = [m for m in static.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        assert layers and all(type(m) in (torch.nn.Conv2d, torch.nn.Linear) and m.weight.is_contiguous()
                              for m in layers)  # fmt: skip
        assert static.stages[4][1].pw.weight.shape[0] == 736 + 32 * r  # its own width, not the widest route's
        assert isinstance(static.stem[0], Pruned) == (r > 0)  # the shared prefix is in route 0's network only
        with torch.no_grad(), net.using(subnet):  # every image forced to this route
            env = execute(routed.plan.program, routed.run_graph, x, {"route": r}, arrays=TORCH)
            torch.testing.assert_close(env["logits"], net(x), atol=1e-5, rtol=1e-5)
    dslim.save_subnet(routed, None, tmp_path / "dyn.safetensors", input_size=64)
    loaded = dslim.load_subnet(tmp_path / "dyn.safetensors").double()
    assert isinstance(loaded, RoutedNet)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, atol=1e-5, rtol=1e-5)
        assert torch.equal(loaded.route(x), route)


def test_per_image_block_masks_equal_each_image_alone():
    """BlockDrop's routing on a ResNet: each block runs only on the images that keep it (grouped per block)."""
    from dslim.evaluation.calibration import recalibrate

    torch.manual_seed(0)
    net = create_supernet("resnet18", num_classes=10, widths=(1.0,), bn="calibrated")
    recalibrate(net, {"full": net.largest()}, [(torch.randn(16, 3, 64, 64), None)], 1)
    net.eval()
    x = torch.randn(12, 3, 64, 64)
    keep = torch.rand(12, len(net.blocks)) < 0.5
    keep[0] = True  # every block kept
    keep[1] = False  # every block skipped, the stage-changing ones included
    ran = []
    hooks = [b.body.register_forward_hook(lambda m, a, y, i=i: ran.append((i, a[0].shape[0])))
             for i, b in enumerate(net.blocks)]  # fmt: skip
    with torch.no_grad():
        out = net.forward_blocks(x, keep)
    for h in hooks:
        h.remove()
    assert sorted(ran) == sorted((i, int(keep[:, i].sum())) for i in range(len(net.blocks)))  # physically fewer
    for i in range(len(x)):
        with torch.no_grad(), net.using(net.largest().with_blocks(tuple(keep[i].tolist()))):
            torch.testing.assert_close(out[i : i + 1], net(x[i : i + 1]), atol=1e-5, rtol=1e-5)
    assert net.subnet == net.largest()
