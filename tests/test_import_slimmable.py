"""Import of JiahuiYu/slimmable_networks' released files (S-MobileNet v1/v2, S-ResNet-50, US-MobileNet v1/v2).

The files are built here in the original's format (key names and shapes of its models, `{'model': ...}`,
`module.` prefix, a latest checkpoint with pickled meters in the legacy serialization of 2019's PyTorch). The
reference logits come from `Original`, an independent functional forward written from the original's key names and
channel rules (`F.conv2d` / `F.batch_norm` on slices of the file's own tensors at width `i`); it also creates the
file's tensors on first use, so the file holds exactly the keys that forward reads. The key sets were checked once
against the original's own model classes (run locally, not committed): the entry counts asserted below.
"""

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from dslim.cli.import_checkpoint import main
from dslim.errors import UserError
from dslim.importers import import_checkpoint, slimmable
from dslim.models.width import width_name

CLASSES, SIZE = 10, 32
V1 = [(64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2)]
V2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
R50 = [3, 4, 6, 3]
US_V1 = [round(0.25 + 0.025 * i, 3) for i in range(31)]


def divisible(v, divisor=8, min_value=1):
    """The original's channel rounding (reference/slimmable.md)."""
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class Original:
    """The original network at width index `i`, as plain functions over its state_dict keys.

    `us`: US-Net BatchNorm (shared affine sliced, statistics in `bn.{i}`); otherwise S-Net's `bn.{i}` holds both.
    Tensors missing from `state` are created (random, the full width's shape): that is how the test files are made.
    """

    def __init__(self, state, widths, i, us, gen=None):
        self.state, self.widths, self.i, self.us, self.gen = state, widths, i, us, gen

    def tensor(self, key, shape, kind="weight"):
        if key not in self.state:
            assert self.gen is not None, f"missing {key}"
            if kind == "weight":
                fan_in = max(1, int(torch.tensor(shape[1:]).prod()))
                value = torch.randn(shape, generator=self.gen) * (2.0 / fan_in) ** 0.5
            elif kind == "var":
                value = torch.rand(shape, generator=self.gen) + 0.5
            elif kind == "count":
                value = torch.tensor(int(torch.randint(1, 9, (), generator=self.gen)))
            else:
                value = torch.randn(shape, generator=self.gen) * 0.1 + (1.0 if kind == "gamma" else 0.0)
            self.state[key] = value
        return self.state[key]

    def conv(self, key, x, c_in, c_out, k, stride, depthwise=False):
        i = self.i
        weight = self.tensor(f"{key}.weight", (max(c_out), 1 if depthwise else max(c_in), k, k))
        weight = weight[: c_out[i]] if depthwise else weight[: c_out[i], : c_in[i]]
        return F.conv2d(x, weight, None, stride, k // 2, 1, c_in[i] if depthwise else 1)

    def bn(self, key, x, c, plain=False):
        i, n = self.i, c[self.i]
        if plain:  # one BatchNorm for every width (MobileNet v2's last)
            stats, affine = f"{key}.", f"{key}."
            self.tensor(f"{key}.num_batches_tracked", (), "count")
        else:
            stats, affine = f"{key}.bn.{i}.", f"{key}." if self.us else f"{key}.bn.{i}."
            self.tensor(f"{key}.bn.{i}.num_batches_tracked", (), "count")
        full = max(c) if affine == f"{key}." else n
        return F.batch_norm(
            x,
            self.tensor(stats + "running_mean", (n,), "mean"),
            self.tensor(stats + "running_var", (n,), "var"),
            self.tensor(affine + "weight", (full,), "gamma")[:n],
            self.tensor(affine + "bias", (full,), "beta")[:n],
            False,
            0.0,
            1e-5,
        )

    def linear(self, x, c_in, classes):
        weight = self.tensor("classifier.0.weight", (classes, max(c_in)))
        return F.linear(x, weight[:, : c_in[self.i]], self.tensor("classifier.0.bias", (classes,), "beta"))

    def channels(self, c, rule=divisible):
        return [rule(c * w) for w in self.widths]

    def mobilenet_v1(self, x):
        c_in = self.channels(32)
        x = F.relu6(self.bn("features.0.1", self.conv("features.0.0", x, [3] * len(c_in), c_in, 3, 2), c_in))
        j = 1
        for c, n, s in V1:
            for r in range(n):
                c_out, p = self.channels(c), f"features.{j}.body"
                x = F.relu6(self.bn(f"{p}.1", self.conv(f"{p}.0", x, c_in, c_in, 3, s if r == 0 else 1, True), c_in))
                x = F.relu6(self.bn(f"{p}.4", self.conv(f"{p}.3", x, c_in, c_out, 1, 1), c_out))
                c_in, j = c_out, j + 1
        return self.linear(x.mean((2, 3)), c_in, CLASSES)

    def mobilenet_v2(self, x):
        c_in = self.channels(32)
        x = F.relu6(self.bn("features.0.1", self.conv("features.0.0", x, [3] * len(c_in), c_in, 3, 2), c_in))
        j = 1
        for t, c, n, s in V2:
            for r in range(n):
                c_out, p, stride = self.channels(c), f"features.{j}.body", s if r == 0 else 1
                mid, k, y = [t * a for a in c_in], 0, x
                if t != 1:
                    y = F.relu6(self.bn(f"{p}.1", self.conv(f"{p}.0", y, c_in, mid, 1, 1), mid))
                    k = 3
                y = F.relu6(self.bn(f"{p}.{k + 1}", self.conv(f"{p}.{k}", y, mid, mid, 3, stride, True), mid))
                y = self.bn(f"{p}.{k + 4}", self.conv(f"{p}.{k + 3}", y, mid, c_out, 1, 1), c_out)
                x = x + y if stride == 1 and c_in == c_out else y
                c_in, j = c_out, j + 1
        last = [1280] * len(c_in)
        x = F.relu6(self.bn(f"features.{j}.1", self.conv(f"features.{j}.0", x, c_in, last, 1, 1), last, plain=True))
        weight = self.tensor("classifier.0.weight", (CLASSES, 1280))
        return F.linear(x.mean((2, 3)), weight, self.tensor("classifier.0.bias", (CLASSES,), "beta"))

    def resnet50(self, x):
        c_in = self.channels(64, int)
        x = F.relu(self.bn("features.0.1", self.conv("features.0.0", x, [3] * len(c_in), c_in, 7, 2), c_in))
        x = F.max_pool2d(x, 3, 2, 1)
        j = 1
        for stage, n in enumerate(R50):
            for r in range(n):
                c_out, p = self.channels(64 * 2**stage * 4, int), f"features.{j}"
                stride = 2 if r == 0 and stage != 0 else 1
                mid = [a // 4 for a in c_out]
                y = F.relu(self.bn(f"{p}.body.1", self.conv(f"{p}.body.0", x, c_in, mid, 1, 1), mid))
                y = F.relu(self.bn(f"{p}.body.4", self.conv(f"{p}.body.3", y, mid, mid, 3, stride), mid))
                y = self.bn(f"{p}.body.7", self.conv(f"{p}.body.6", y, mid, c_out, 1, 1), c_out)
                if stride == 1 and c_in == c_out:
                    x = F.relu(y + x)
                else:
                    sc = self.conv(f"{p}.shortcut.0", x, c_in, c_out, 1, stride)
                    x = F.relu(y + self.bn(f"{p}.shortcut.1", sc, c_out))
                c_in, j = c_out, j + 1
        return self.linear(x.mean((2, 3)), c_in, CLASSES)


def original_file(arch, widths, us, seed=0):
    """The state_dict the original would save (prefixed `module.` by its DataParallel) and a reference runner."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    x = torch.randn(2, 3, SIZE, SIZE, generator=gen)
    for i in range(len(widths)):
        getattr(Original(state, widths, i, us, gen), arch)(x)
    return {f"module.{k}": v for k, v in state.items()}, state


def reference(state, arch, widths, i, us, x):
    with torch.no_grad():
        return getattr(Original(state, widths, i, us), arch)(x)


def assert_imports(tmp_path, arch, widths, us, check_widths, entries, given=()):
    """Import a file of `arch` holding `widths`; its logits at `check_widths` (indices) equal the reference."""
    prefixed, state = original_file(arch, widths, us)
    assert len(prefixed) == entries  # the original's state_dict entry count for these widths
    path = tmp_path / f"{arch}.pt"
    torch.save({"model": prefixed}, path)
    net, meta = import_checkpoint("slimmable", slimmable.Options(str(path), "x.safetensors", widths=given))
    assert net.arch == arch and meta["widths"] == list(widths)
    assert net.bn_mode == ("calibrated" if us else "switchable")
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    net.eval()
    for i in check_widths:
        expected = reference(state, arch, widths, i, us, x)
        with torch.no_grad(), net.using(net.resolve(width_name(widths[i]))):
            got = net(x)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    return net, meta


def test_s_mobilenet_v1(tmp_path):
    assert_imports(tmp_path, "mobilenet_v1", (0.25, 0.5, 0.75, 1.0), False, range(4), 569)


def test_s_mobilenet_v2(tmp_path):
    net, meta = assert_imports(tmp_path, "mobilenet_v2", (0.35, 0.5, 0.75, 1.0), False, range(4), 1079)
    assert "s_mobilenet_v2_train_val.yml" in meta["widths_from"]


def test_s_resnet50(tmp_path):
    assert_imports(tmp_path, "resnet50", (0.25, 0.5, 0.75, 1.0), False, (0, 3), 1115)


def test_us_mobilenet_v1_takes_the_app_widths(tmp_path):
    net, meta = assert_imports(tmp_path, "mobilenet_v1", tuple(US_V1), True, (0, 13, 30), 2594)
    assert "width_mult_list of apps/us_mobilenet_v1_train_val.yml" in meta["widths_from"]
    assert len(net.named_subnets()) == 31 and net.width_range == (0.25, 1.0)


def test_us_mobilenet_v2_with_named_widths(tmp_path):
    widths = (0.35, 0.6, 1.0, 0.8)  # a calibration with test widths appended: the order of the file's bn.{i}
    net, meta = assert_imports(tmp_path, "mobilenet_v2", widths, True, range(4), 773, given=widths)
    assert meta["widths_from"] == "--widths"


class _Meters(types.ModuleType):
    """`utils.meters` of the original, for pickling: a ScalarMeter (allow-listed) and another meter (refused)."""


def _meter_module(monkeypatch):
    module = _Meters("utils.meters")

    class ScalarMeter:
        def __init__(self, name):
            self.name, self.steps, self.values = name, 3, [0.5, 0.25]

    class AverageMeter(ScalarMeter):
        pass

    for cls in (ScalarMeter, AverageMeter):
        cls.__module__, cls.__qualname__ = "utils.meters", cls.__name__
        setattr(module, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, "utils", types.ModuleType("utils"))
    monkeypatch.setitem(sys.modules, "utils.meters", module)
    return module


def _latest(path, prefixed, meter):
    meters = {"0.25": {"loss": meter("train_loss/0.25")}, "best_val": meter("best_val")}
    torch.save(
        {"model": prefixed, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
         "last_epoch": 7, "best_val": 0.31, "meters": (meters, meters)},
        path,
        _use_new_zipfile_serialization=False,  # the files of 2019's PyTorch
    )  # fmt: skip


def test_latest_checkpoint_with_meters_through_the_command(tmp_path, monkeypatch, capsys):
    meters = _meter_module(monkeypatch)
    prefixed, state = original_file("mobilenet_v1", (0.25, 0.5, 0.75, 1.0), False)
    path, out = tmp_path / "latest_checkpoint.pt", tmp_path / "s_mbv1.safetensors"
    _latest(path, prefixed, meters.ScalarMeter)
    main(["slimmable", str(path), "--out", str(out)])
    assert "S-MobileNet v1, widths 0.25, 0.5, 0.75, 1.0" in capsys.readouterr().out
    from dslim.io.artifacts import load_supernet

    net, meta = load_supernet(out)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad(), net.using(net.resolve("0.5"), train=False):
        torch.testing.assert_close(net(x), reference(state, "mobilenet_v1", (0.25, 0.5, 0.75, 1.0), 1, False, x))
    assert meta["kind"] == "slimmable" and meta["stage"] == "import"


def _refused(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main(list(map(str, args)))
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def test_refusals(tmp_path, monkeypatch, capsys):
    meters = _meter_module(monkeypatch)
    out = tmp_path / "o.safetensors"
    prefixed, _ = original_file("mobilenet_v1", (0.25, 0.5, 1.0), True)
    us = tmp_path / "us.pt"
    torch.save({"model": prefixed}, us)
    # any other pickled object is refused, by name, even next to the allowed meters
    foreign = tmp_path / "foreign.pt"
    _latest(foreign, prefixed, meters.AverageMeter)
    assert "utils.meters.AverageMeter" in _refused(capsys, "slimmable", foreign, "--out", out)
    # three US widths, not the app's list nor its range: the widths must be named, and named right
    assert "--widths W1 ... W3" in _refused(capsys, "slimmable", us, "--out", out)
    assert "--widths gives 2" in _refused(capsys, "slimmable", us, "--out", out, "--widths", 0.25, 1.0)
    assert "shape" in _refused(capsys, "slimmable", us, "--out", out, "--widths", 0.25, 0.75, 1.0)
    # a file of another kind says which kind it looks like, both ways
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_import_checkpoint import official_state

    dsnet = tmp_path / "dsnet.pth.tar"
    torch.save({"arch": "slimmable_mbnet_v1_bn_uniform", "state_dict": official_state(torch.Generator())}, dsnet)
    assert "looks like a dsnet checkpoint" in _refused(capsys, "slimmable", dsnet, "--out", out)
    assert "looks like a slimmable checkpoint" in _refused(capsys, "dsnet", us, "--out", out)
    other = tmp_path / "other.pt"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, other)
    assert "nor of another kind" in _refused(capsys, "slimmable", other, "--out", out)
    assert not out.exists()


def test_missing_and_extra_keys_are_named(tmp_path):
    prefixed, _ = original_file("mobilenet_v1", (0.25, 0.5, 0.75, 1.0), False)
    for change, message in (("drop", "features.5.body.4.bn.2.running_var"), ("add", "features.14.weight")):
        state = dict(prefixed)
        if change == "drop":
            del state["module." + message]
        else:
            state["module." + message] = torch.zeros(3)
        path = tmp_path / f"{change}.pt"
        torch.save({"model": state}, path)
        with pytest.raises(UserError, match=message.replace(".", r"\.")):
            import_checkpoint("slimmable", slimmable.Options(str(path), "x.safetensors"))
