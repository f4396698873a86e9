"""Import of Tushar-N/blockdrop's checkpoints: pretrained base ResNets and BlockDrop agents (curriculum and joint
fine-tuning), in the legacy serialization of PyTorch 0.3's `.t7` files.

The files are built here with the original's key names and shapes: its flat ResNets (`conv1`, `bn1`,
`blocks.{stage}.{block}.{conv,bn}{1,2[,3]}`, `ds.{stage}.{0,1}`, `fc`), the pretrained files' `layer{L}.{j}` names
with `downsample` and a `module.` prefix, and the agent (`features.*` in the flat layout, `logit`, `vnet`,
`features.fc` of legacy files). The reference is `Original`, an independent functional forward written from the
original's model description (`F.conv2d` / `F.batch_norm` over the file's tensors; a skipped block leaves its
residual: the identity, or average pool + zero channels (CIFAR), or the 1x1 conv + BN (ImageNet)), run one image
at a time with that image's greedy policy (`p >= 0.5`), as the original's `forward_single` did. It creates the
file's tensors on first use, so the file holds exactly the keys that forward reads.
"""

import pytest
import torch
import torch.nn.functional as F
from test_import_slimmable import Original as SlimOriginal
from test_import_slimmable import _refused, original_file

from dslim.cli.import_checkpoint import main
from dslim.io.artifacts import load_supernet

CASES = {  # arch: (cifar, blocks per stage, bottleneck, classes, image size)
    "cifar_resnet32": (True, (5, 5, 5), False, 10, 32),
    "cifar_resnet110": (True, (18, 18, 18), False, 100, 32),
    "resnet101": (False, (3, 4, 23, 3), True, 1000, 64),
}


class Original(SlimOriginal):
    """The original's flat ResNet and policy network over a state_dict of its key names (plain BatchNorms)."""

    def __init__(self, state, gen=None):
        super().__init__(state, None, 0, False, gen)

    def conv(self, key, x, c_in, c_out, k, stride):
        return F.conv2d(x, self.tensor(f"{key}.weight", (c_out, c_in, k, k)), None, stride, k // 2)

    def bn(self, key, x, c):
        stats = [
            self.tensor(f"{key}.{n}", (c,), kind) for n, kind in (("running_mean", "mean"), ("running_var", "var"))
        ]
        affine = [self.tensor(f"{key}.{n}", (c,), kind) for n, kind in (("weight", "gamma"), ("bias", "beta"))]
        return F.batch_norm(x, *stats, *affine, False, 0.0, 1e-5)

    def body(self, p, x, c_in, planes, stride, bottleneck):
        if bottleneck:
            x = F.relu(self.bn(f"{p}.bn1", self.conv(f"{p}.conv1", x, c_in, planes, 1, 1), planes))
            x = F.relu(self.bn(f"{p}.bn2", self.conv(f"{p}.conv2", x, planes, planes, 3, stride), planes))
            return self.bn(f"{p}.bn3", self.conv(f"{p}.conv3", x, planes, 4 * planes, 1, 1), 4 * planes)
        x = F.relu(self.bn(f"{p}.bn1", self.conv(f"{p}.conv1", x, c_in, planes, 3, stride), planes))
        return self.bn(f"{p}.bn2", self.conv(f"{p}.conv2", x, planes, planes, 3, 1), planes)

    def features(self, prefix, x, cifar, depths, bottleneck, keep=None):
        """Pooled features; `keep[t]` (one image) says whether block `t` runs."""
        if cifar:
            x = F.relu(self.bn(f"{prefix}bn1", self.conv(f"{prefix}conv1", x, 3, 16, 3, 1), 16))
        else:
            x = F.relu(self.bn(f"{prefix}bn1", self.conv(f"{prefix}conv1", x, 3, 64, 7, 2), 64))
            x = F.max_pool2d(x, 3, 2, 1)
        c_in, t = x.shape[1], 0
        widths = (16, 32, 64) if cifar else (64, 128, 256, 512)
        for s, (planes, n) in enumerate(zip(widths, depths)):
            out = planes * (4 if bottleneck else 1)
            for b in range(n):
                stride = 2 if s and b == 0 else 1
                residual = x
                if b == 0 and (stride != 1 or c_in != out):
                    if cifar:  # DownsampleB: average pool, then zero channels
                        residual = F.avg_pool2d(x, stride)
                        residual = torch.cat([residual] + [residual * 0] * (out // c_in - 1), 1)
                    else:
                        residual = self.bn(
                            f"{prefix}ds.{s}.1", self.conv(f"{prefix}ds.{s}.0", x, c_in, out, 1, stride), out
                        )
                if keep is None or keep[t]:
                    x = F.relu(residual + self.body(f"{prefix}blocks.{s}.{b}", x, c_in, planes, stride, bottleneck))
                else:
                    x = residual
                c_in, t = out, t + 1
        return x.mean((2, 3))

    def resnet(self, x, arch, keep=None):
        cifar, depths, bottleneck, classes, _ = CASES[arch]
        feats = self.features("", x, cifar, depths, bottleneck, keep)
        return F.linear(
            feats, self.tensor("fc.weight", (classes, feats.shape[1])), self.tensor("fc.bias", (classes,), "beta")
        )

    def agent(self, x, arch):
        cifar, depths, *_ = CASES[arch]
        feats = self.features("features.", x if cifar else F.avg_pool2d(x, 2), cifar, [1] * len(depths), False)
        self.tensor("vnet.weight", (1, feats.shape[1]))  # the value head: in the file, unused by inference
        self.tensor("vnet.bias", (1,), "beta")
        k = sum(depths)
        return torch.sigmoid(
            F.linear(feats, self.tensor("logit.weight", (k, feats.shape[1])), self.tensor("logit.bias", (k,), "beta"))
        )

    def routed(self, x, arch):
        """Each image through the blocks its greedy policy keeps, alone (the original's `forward_single`)."""
        keep = self.agent(x, arch) >= 0.5
        return torch.cat([self.resnet(x[n : n + 1], arch, keep[n].tolist()) for n in range(len(x))]), keep


def original_states(arch, seed=0):
    gen = torch.Generator().manual_seed(seed)
    resnet, agent = {}, {}
    x = torch.randn(2, 3, CASES[arch][4], CASES[arch][4], generator=gen)
    Original(resnet, gen).resnet(x, arch)
    Original(agent, gen).agent(x, arch)
    agent["logit.bias"] = agent["logit.bias"] + 0.5  # keep most blocks, with decisions that differ per image
    return resnet, agent


def pretrained_names(flat):
    """The pretrained files' names: `module.layer{L}.{j}.` and `downsample`, from BlockDrop's flat ones."""
    out = {}
    for key, value in flat.items():
        parts = key.split(".")
        if parts[0] == "blocks":
            key = f"layer{int(parts[1]) + 1}.{'.'.join(parts[2:])}"
        elif parts[0] == "ds":
            key = f"layer{int(parts[1]) + 1}.0.downsample.{'.'.join(parts[2:])}"
        out[f"module.{key}"] = value
    return out


def save_t7(obj, path):
    torch.save(obj, path, _use_new_zipfile_serialization=False)  # the legacy serialization of the .t7 files


CONVENTIONS = {  # Tushar-N/blockdrop utils.py get_transforms: "Only the R32 pretrained model subtracts the mean"
    "cifar_resnet110": ([0.0] * 3, [1.0] * 3),
    "cifar_resnet32": ([125.3 / 255, 123.0 / 255, 113.9 / 255], [63.0 / 255, 62.1 / 255, 66.7 / 255]),
    "resnet101": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
}


def assert_routes_like_the_original(out, resnet, agent, arch):
    net, meta = load_supernet(out)
    assert net.arch == arch and net.is_dynamic and net.router_trained and meta["kind"] == "blockdrop"
    mean, std = CONVENTIONS[arch]  # the artifact records the inputs the original's weights read
    assert meta["preprocessing"]["mean"] == pytest.approx(mean) and meta["preprocessing"]["std"] == pytest.approx(std)
    size = CASES[arch][4]
    x = torch.randn(6, 3, size, size, generator=torch.Generator().manual_seed(1))
    net.eval()
    with torch.no_grad():
        expected, expected_keep = Original({**resnet, **agent}).routed(x, arch)
        got, keep = net.forward_routed(x)
        static = net(x)
        full = Original(resnet).resnet(x, arch)
    assert torch.equal(keep, expected_keep)
    assert 1 < torch.unique(keep, dim=0).shape[0] and not keep.all()  # the batch spans several policies
    tol = dict(rtol=1e-4, atol=1e-4 * float(full.abs().max()))
    torch.testing.assert_close(got, expected, **tol)
    torch.testing.assert_close(static, full, **tol)  # every block: the base network itself


@pytest.mark.parametrize("arch", ["cifar_resnet110", "resnet101"])
def test_finetuned_checkpoint_imports_agent_and_resnet(tmp_path, capsys, arch):
    resnet, agent = original_states(arch)
    path, out = tmp_path / "ckpt_E_30_A_0.936.t7", tmp_path / "bd.safetensors"
    save_t7({"agent": agent, "resnet": resnet, "epoch": 30, "reward": 0.52, "acc": 0.936}, path)
    main(["blockdrop", str(path), "--out", str(out)])
    assert f"{arch} with its policy network" in capsys.readouterr().out
    assert_routes_like_the_original(out, resnet, agent, arch)


def test_curriculum_agent_with_its_pretrained_base(tmp_path, capsys):
    arch = "cifar_resnet32"
    resnet, agent = original_states(arch)
    base, path, out = tmp_path / "pk_E_164_A_0.923.t7", tmp_path / "ckpt_E_5.t7", tmp_path / "bd.safetensors"
    save_t7({"state_dict": pretrained_names(resnet), "epoch": 164, "best_prec1": 92.3}, base)
    legacy = {**agent, "features.fc.weight": torch.zeros(10, 64), "features.fc.bias": torch.zeros(10)}
    save_t7({"net": legacy, "epoch": 5, "reward": 0.1, "acc": 0.9}, path)  # an old agent file: `net`, features.fc
    assert "give its base ResNet with --base" in _refused(capsys, "blockdrop", path, "--out", out)
    main(["blockdrop", str(path), "--base", str(base), "--out", str(out)])
    assert_routes_like_the_original(out, resnet, agent, arch)
    # the base alone: the static network, no policy
    main(["blockdrop", str(base), "--out", str(out), "--overwrite"])
    net, _ = load_supernet(out)
    x = torch.randn(2, 3, 32, 32)
    assert not net.is_dynamic
    with torch.no_grad(), net.using(train=False):
        torch.testing.assert_close(net(x), Original(resnet).resnet(x, arch), rtol=1e-4, atol=1e-4)


def test_refusals(tmp_path, capsys):
    resnet, agent = original_states("cifar_resnet32")
    out = tmp_path / "o.safetensors"
    _, r110_agent = original_states("cifar_resnet110")
    mismatched = tmp_path / "mismatched.t7"
    save_t7({"agent": r110_agent, "resnet": resnet}, mismatched)
    assert "decides 54 blocks" in _refused(capsys, "blockdrop", mismatched, "--out", out)
    # a file of another kind says which kind it looks like, both ways
    bd = tmp_path / "bd.t7"
    save_t7({"agent": agent, "resnet": resnet}, bd)
    assert "looks like a blockdrop checkpoint" in _refused(capsys, "slimmable", bd, "--out", out)
    s_net, _ = original_file("mobilenet_v1", (0.25, 0.5, 0.75, 1.0), False)
    snet = tmp_path / "s.pt"
    torch.save({"model": s_net}, snet)
    assert "looks like a slimmable checkpoint" in _refused(capsys, "blockdrop", snet, "--out", out)
    # an unknown depth, and a key the architecture does not have, are named
    deeper = {**resnet, **{k.replace("blocks.0.4.", "blocks.0.5."): v for k, v in resnet.items() if "blocks.0.4." in k}}
    save_t7({"resnet": deeper, "agent": agent}, bd)
    assert "[6, 5, 5] blocks per stage" in _refused(capsys, "blockdrop", bd, "--out", out)
    save_t7({"resnet": {**resnet, "blocks.0.0.conv3.weight": torch.zeros(1)}, "agent": agent}, bd)
    assert "blocks.0.0.conv3.weight" in _refused(capsys, "blockdrop", bd, "--out", out)
    assert not out.exists()
