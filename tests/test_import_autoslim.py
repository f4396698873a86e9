"""Import of the released AutoSlim models (JiahuiYu/slimmable_networks: AutoSlim-MobileNet v1/v2, -MNasNet, -ResNet-50).

The files are built here in the original's format: the published configurations of the apps' ymls (`MBV1`, `MBV2`, `R50`
of test_autoslim, `MNAS` here, one list per configuration, in the yml's order), its key names (`module.features.k...`,
switchable `bn.{i}`), weights as wide as the widest configuration of each layer. The reference logits come from
`Original`, an independent functional forward written from the original's model files (`F.conv2d` / `F.batch_norm` on
the file's own tensors sliced to configuration `i`'s counts, read from its channel list in the original's pop order;
residuals where the original adds them: stride 1 and the same widths in every configuration); it creates the file's
tensors on first use, so the file holds exactly the keys that forward reads.
"""

import pytest
import torch
import torch.nn.functional as F
from test_autoslim import MBV1, MBV2, PUBLISHED, R50
from test_import_slimmable import Original, _refused, original_file

from dslim.importers import autoslim, import_checkpoint
from dslim.io.artifacts import load_supernet, save_supernet

V1_STRIDES = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
V2_STRIDES = [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]
V2_KERNELS = [3] * 17
# AutoSlim-MNasNet (models/autoslim_mnasnet.py): each block's stride and depthwise kernel
MNAS_STRIDES = [1, 2, 1, 1, 2, 1, 1, 2, 1, 1, 1, 1, 2, 1, 1, 1, 1]
MNAS_KERNELS = [3, 3, 3, 3, 5, 5, 5, 5, 5, 5, 3, 3, 5, 5, 5, 5, 3]
MNAS = {  # apps/autoslim_mnasnet_train_val.yml: stem; block 0's output; (expansion, output) of blocks 1..16; last conv
    "217M": [16, 8, 24, 16, 48, 16, 24, 16, 48, 32, 48, 32, 48, 32, 192, 56, 400, 56, 400, 56, 400, 80, 432, 80, 648,
             192, 864, 192, 864, 192, 864, 192, 1728, 280, 1280, 1000],
    "315M": [16, 8, 40, 24, 48, 24, 40, 24, 48, 40, 80, 40, 48, 40, 352, 64, 400, 64, 400, 64, 464, 80, 432, 80, 792,
             288, 864, 288, 864, 288, 1008, 288, 1728, 360, 1920, 1000],
    "532M": [16, 8, 64, 32, 56, 32, 72, 32, 104, 64, 128, 64, 96, 64, 384, 104, 528, 104, 464, 104, 720, 128, 576, 128,
             864, 288, 1584, 288, 1728, 288, 1728, 288, 1728, 480, 1920, 1000],
}  # fmt: skip
"""The yml's comments say 217M, 315M, 539M; the README's table 217M, 315M, 532M. The original's own profiler
(utils/model_profiling.py, run locally on the model the yml builds) counts 217,283,368, 315,354,184 and 531,867,152
MACs: the README is right. dslim's names and counts must be these."""
MNAS_MACS = (217_283_368, 315_354_184, 531_867_152)
SIZE = 32


class AutoSlimOriginal(Original):
    """The original AutoSlim network at configuration `i` of `lists` (switchable BatchNorm: `bn.{i}`)."""

    def __init__(self, state, lists, i, gen=None):
        super().__init__(state, None, i, False, gen)
        self.lists, self.pos = lists, 0

    def pop(self):
        """The next layer's channels in every configuration (the original's `pop_channels`)."""
        self.pos += 1
        return [values[self.pos - 1] for values in self.lists]

    def mobilenet_v1(self, x):
        c_in = self.pop()
        x = F.relu6(self.bn("features.0.1", self.conv("features.0.0", x, [3] * len(c_in), c_in, 3, 2), c_in))
        for j, s in enumerate(V1_STRIDES, 1):
            c_out, p = self.pop(), f"features.{j}.body"
            x = F.relu6(self.bn(f"{p}.1", self.conv(f"{p}.0", x, c_in, c_in, 3, s, True), c_in))
            x = F.relu6(self.bn(f"{p}.4", self.conv(f"{p}.3", x, c_in, c_out, 1, 1), c_out))
            c_in = c_out
        return self.linear(x.mean((2, 3)), c_in, self.pop()[0])

    def mobilenet_v2(self, x, strides=V2_STRIDES, kernels=V2_KERNELS):
        c_in = self.pop()
        x = F.relu6(self.bn("features.0.1", self.conv("features.0.0", x, [3] * len(c_in), c_in, 3, 2), c_in))
        for j, (stride, kernel) in enumerate(zip(strides, kernels), 1):
            mid = c_in if j == 1 else self.pop()
            c_out, p, k, y = self.pop(), f"features.{j}.body", 0, x
            if mid != c_in:
                y = F.relu6(self.bn(f"{p}.1", self.conv(f"{p}.0", y, c_in, mid, 1, 1), mid))
                k = 3
            y = F.relu6(self.bn(f"{p}.{k + 1}", self.conv(f"{p}.{k}", y, mid, mid, kernel, stride, True), mid))
            y = self.bn(f"{p}.{k + 4}", self.conv(f"{p}.{k + 3}", y, mid, c_out, 1, 1), c_out)
            x = x + y if stride == 1 and c_in == c_out else y
            c_in = c_out
        last, j = self.pop(), len(strides) + 1
        x = F.relu6(self.bn(f"features.{j}.1", self.conv(f"features.{j}.0", x, c_in, last, 1, 1), last))
        return self.linear(x.mean((2, 3)), last, self.pop()[0])

    def mnasnet(self, x):
        """The same network with MNasNet's strides and kernels (the original's autoslim_mnasnet.py)."""
        return self.mobilenet_v2(x, MNAS_STRIDES, MNAS_KERNELS)

    def resnet50(self, x):
        c_in = self.pop()
        x = F.relu(self.bn("features.0.1", self.conv("features.0.0", x, [3] * len(c_in), c_in, 7, 2), c_in))
        x = F.max_pool2d(x, 3, 2, 1)
        j = 1
        for stage, n in enumerate((3, 4, 6, 3)):
            for r in range(n):
                if r == 0:
                    self.pop()  # a stage's output width, listed once more before its first block
                mid1, mid2, c_out, p = self.pop(), self.pop(), self.pop(), f"features.{j}"
                stride = 2 if r == 0 and stage else 1
                y = F.relu(self.bn(f"{p}.body.1", self.conv(f"{p}.body.0", x, c_in, mid1, 1, 1), mid1))
                y = F.relu(self.bn(f"{p}.body.4", self.conv(f"{p}.body.3", y, mid1, mid2, 3, stride), mid2))
                y = self.bn(f"{p}.body.7", self.conv(f"{p}.body.6", y, mid2, c_out, 1, 1), c_out)
                if stride == 1 and c_in == c_out:
                    x = F.relu(y + x)
                else:
                    x = F.relu(y + self.bn(f"{p}.shortcut.1", self.conv(f"{p}.shortcut.0", x, c_in, c_out, 1, stride),
                                           c_out))  # fmt: skip
                c_in, j = c_out, j + 1
        return self.linear(x.mean((2, 3)), c_in, self.pop()[0])


CASES = {"mobilenet_v1": MBV1, "mobilenet_v2": MBV2, "mnasnet": MNAS, "resnet50": R50}


def autoslim_file(arch, seed=0):
    gen = torch.Generator().manual_seed(seed)
    state, lists = {}, list(CASES[arch].values())
    x = torch.randn(2, 3, SIZE, SIZE, generator=gen)
    for i in range(len(lists)):
        getattr(AutoSlimOriginal(state, lists, i, gen), arch)(x)
    return {f"module.{k}": v for k, v in state.items()}, state


@pytest.mark.parametrize("arch", list(CASES))
def test_released_autoslim_models_import_with_their_configurations(tmp_path, arch):
    prefixed, state = autoslim_file(arch)
    path = tmp_path / f"autoslim_{arch}.pt"
    torch.save({"model": prefixed}, path)
    net, meta = import_checkpoint("autoslim", autoslim.Options(str(path), "x.safetensors"))
    # each configuration is named by its MACs, which are the published ones (the yml's comments)
    names = [f"autoslim-{m}" for m in CASES[arch]]
    assert list(net.named_subnets()) == names == list(meta["configurations"])
    assert net.bn_mode == "switchable" and net.arch == arch
    out = tmp_path / "as.safetensors"
    save_supernet(net, out, stage="import", kind="autoslim", **meta)
    loaded, _ = load_supernet(out)  # the artifact rebuilds with its names (what export/evaluate/profile resolve)
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    lists = list(CASES[arch].values())
    for i, name in enumerate(names):
        with torch.no_grad():
            expected = AutoSlimOriginal(state, lists, i)
            expected = getattr(expected, arch)(x)
        with torch.no_grad(), loaded.using(loaded.resolve(name), train=False):
            got = loaded(x)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    # the published MACs (and params) of each configuration, as dslim counts them
    from dslim.models.complexity import measure

    if arch == "mnasnet":  # the original's own counts (its README rounds them); params: only the supernet's published
        assert len(prefixed) == 834  # the original model's state_dict entries (counted once on its own class)
        assert loaded.groups["head"].max == 1920  # its configurations prune the last conv: a group of its own
        assert tuple(measure(loaded, 224, loaded.resolve(n)).macs for n in names) == MNAS_MACS
        return
    for name, (macs_m, params_m) in zip(names, PUBLISHED[arch].values()):
        cost = measure(loaded, 224, loaded.resolve(name))
        assert (round(cost.macs / 1e6, 1), round(cost.params / 1e6, 2)) == (macs_m, params_m), name


def test_names_and_refusals(tmp_path, capsys):
    prefixed, _ = autoslim_file("mobilenet_v1")
    path, out = tmp_path / "as_mbv1.pt", tmp_path / "o.safetensors"
    torch.save({"model": prefixed}, path)
    net, _ = import_checkpoint("autoslim", autoslim.Options(str(path), "x.safetensors", names=("s", "m", "l")))
    assert list(net.named_subnets()) == ["s", "m", "l"]
    assert "--names gives 2" in _refused(capsys, "autoslim", path, "--out", out, "--names", "a", "b")
    # a slimmable file is not an AutoSlim one, and the other way round: each names the kind the file looks like
    s_net, _ = original_file("mobilenet_v1", (0.25, 0.5, 0.75, 1.0), False)
    snet = tmp_path / "s_mbv1.pt"
    torch.save({"model": s_net}, snet)
    assert "looks like a slimmable checkpoint" in _refused(capsys, "autoslim", snet, "--out", out)
    assert "looks like an autoslim checkpoint" in _refused(capsys, "slimmable", path, "--out", out)
    # configurations that break a residual tie are refused, naming the layers
    broken = dict(prefixed)
    key = "module.features.3.body.4.bn.0"
    for part in ("weight", "bias", "running_mean", "running_var"):
        broken[f"{key}.{part}"] = broken[f"{key}.{part}"][:-8]
    torch.save({"model": broken}, path)
    assert "features.4.body.1" in _refused(capsys, "autoslim", path, "--out", out)
    # structures the original derives from the widths but dslim's supernets do not have say what is not supported
    prefixed, _ = autoslim_file("resnet50")
    prefixed["module.features.2.shortcut.0.weight"] = torch.zeros(8, 8, 1, 1)  # a second block with a projection
    torch.save({"model": prefixed}, path)
    assert "block 1 has a projection shortcut conv in the file" in _refused(capsys, "autoslim", path, "--out", out)
    shuffle = {"head_0.0.weight": torch.zeros(8, 3, 3, 3), "classifier.0.weight": torch.zeros(10, 960)}
    torch.save({"model": {f"module.{k}": v for k, v in shuffle.items()}}, path)
    assert "looks like a slimmable checkpoint" in _refused(capsys, "autoslim", path, "--out", out)
    assert "S-ShuffleNet file" in _refused(capsys, "slimmable", path, "--out", out)
    assert not out.exists()
