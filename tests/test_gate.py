"""DS-Net gate training pieces: straight-through routing equals the routed subnet; MAdds penalty gradient."""

import torch

from tests.test_dynamic import _dsnet_with_mixed_routes


def test_gumbel_forward_equals_each_image_at_its_sampled_route():
    net = _dsnet_with_mixed_routes()
    x = torch.randn(6, 3, 64, 64, dtype=torch.float64)
    torch.manual_seed(1)
    logits, gate, onehot = net(x, gumbel_tau=1.0)
    assert torch.equal(onehot.sum(1), torch.ones(6)) and gate.shape == (6, 4)
    routes = onehot.argmax(1)
    for i in range(6):
        with torch.no_grad(), net.using(net.routes()[routes[i]]):
            torch.testing.assert_close(logits[i : i + 1], net(x[i : i + 1]).float(), atol=1e-5, rtol=1e-5)
    assert net.subnet == net.largest()


def test_macs_penalty_pushes_the_gate_to_slimmer_routes():
    net = _dsnet_with_mixed_routes(torch.float32)
    from dslim.config import OptimConfig
    from dslim.methods.gate import GateConfig, GateTraining

    sets = GateTraining(GateConfig(optim=OptimConfig()), net, 64).param_sets(net)
    names = {id(p): n for n, p in net.named_parameters()}
    assert [names[id(p)] for s in sets.values() for p in s.params] == ["stages.3.0.gate.weight"]
    net.requires_grad_(False)
    net.gate_block.gate.requires_grad_(True)
    macs = net.route_macs(64)
    assert torch.all(macs[1:] > macs[:-1])
    x = torch.randn(16, 3, 64, 64)
    opt = torch.optim.SGD([net.gate_block.gate.weight], lr=50.0)

    def expected_macs():
        with torch.no_grad(), net.using(net.routes()[0]):
            return (net.gate_logits(net.prefix(x)[1]).softmax(1) @ macs).mean()

    before = expected_macs()
    for _ in range(3):
        torch.manual_seed(0)
        _, _, onehot = net(x, gumbel_tau=1.0)
        ((onehot @ macs / 1e6) ** 2).mean().backward()
        opt.step()
        opt.zero_grad()
    assert expected_macs() < before
