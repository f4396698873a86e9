"""Channel files: mmrazor 0.x channel-config YAML and dslim subnet JSON, written and read back; files that do not fit
the architecture exit 2 naming their first offending entry."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import subprocess_env

from dslim.errors import UserError
from dslim.io.channels import read_channels, to_yaml, write_channels
from dslim.models import create_supernet
from dslim.models.sampling import in_bins


def mbv2():
    return create_supernet("mobilenet_v2", max_width=1.5, widths=(1.5,), bn="calibrated")


@pytest.mark.parametrize(("arch", "max_width"), [("mobilenet_v2", 1.5), ("resnet50", 1.0), ("mobilenet_v1", 1.0),
                                                 ("resnet18", 1.0), ("ds_mobilenet_v1", None)])  # fmt: skip
def test_yaml_and_json_round_trip_to_the_same_subnet(tmp_path, arch, max_width):
    kwargs = {} if max_width is None else {"max_width": max_width, "widths": (max_width,), "bn": "calibrated"}
    net = create_supernet(arch, **kwargs)
    rng = np.random.default_rng(1)
    for i in range(3):
        subnet = in_bins(net, rng, 12, 2)
        for suffix in ("yaml", "json"):
            path = tmp_path / f"{i}.{suffix}"
            write_channels(path, net, subnet)
            assert read_channels(path, net) == subnet


def test_yaml_uses_mmcls_layer_names_and_mmrazor_fields():
    net = mbv2()
    subnet = in_bins(net, np.random.default_rng(0), 12, 2)
    entries = yaml.safe_load(to_yaml(net, subnet))
    assert len(entries) == 105  # 52 convs + 52 BNs + the classifier of mmcls's MobileNetV2, as mmrazor writes
    assert entries["backbone.conv1.conv"] == {"in_channels": 3, "out_channels": subnet["stem"], "raw_in_channels": 3,
                                              "raw_out_channels": 48}  # fmt: skip
    # layer1 has no expansion: conv.0 is its depthwise conv (on the stem's channels), conv.1 the projection
    assert entries["backbone.layer1.0.conv.0.conv"]["out_channels"] == subnet["stem"]
    assert entries["backbone.layer1.0.conv.1.bn"] == {"out_channels": subnet["s0"], "raw_out_channels": 24}
    expand = entries["backbone.layer2.0.conv.0.conv"]
    assert expand == {"in_channels": subnet["s0"], "out_channels": subnet["b1.expand"], "raw_in_channels": 24,
                      "raw_out_channels": 144}  # fmt: skip
    assert entries["backbone.layer7.0.conv.2.conv"]["raw_out_channels"] == 480
    assert entries["backbone.conv2.conv"] == {"in_channels": subnet["s6"], "out_channels": 1920,
                                              "raw_in_channels": 480, "raw_out_channels": 1920}  # fmt: skip
    assert entries["head.fc"]["in_channels"] == 1920

    r50 = create_supernet("resnet50", widths=(1.0,), bn="calibrated")
    names = yaml.safe_load(to_yaml(r50, r50.largest()))
    for name in ("backbone.conv1", "backbone.bn1", "backbone.layer1.0.conv3", "backbone.layer1.0.downsample.0",
                 "backbone.layer1.0.downsample.1", "backbone.layer4.2.bn2", "head.fc"):  # fmt: skip
        assert name in names
    assert "backbone.layer1.1.downsample.0" not in names and names["backbone.layer3.5.conv2"]["raw_in_channels"] == 256


def _yaml(tmp_path, edit, net=None):
    """An mmrazor-format file of the largest MobileNet v2 x1.5, changed by `edit(entries)`."""
    net = net or mbv2()
    entries = yaml.safe_load(to_yaml(net, net.largest()))
    edit(entries)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(entries, sort_keys=False))
    return path


def test_entries_not_given_keep_the_widest_width_and_dslim_paths_are_accepted(tmp_path):
    net = mbv2()
    path = tmp_path / "few.yaml"
    path.write_text("backbone.layer3.1.conv.0.bn: {out_channels: 96}\nfeatures.1.body.6: {out_channels: 16}\n")
    subnet = read_channels(path, net)
    assert subnet["b4.expand"] == 96 and subnet["s1"] == 16
    assert all(subnet[g] == grp.max for g, grp in net.groups.items() if g not in ("b4.expand", "s1"))
    entry = tmp_path / "entry.json"
    entry.write_text(json.dumps({"subnet": subnet.to_json(), "macs": 1}))  # an entry of a search's subnets.json
    assert read_channels(entry, net) == subnet


def _set(name, field, value):
    return lambda entries: entries[name].__setitem__(field, value)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda e: e.update({"backbone.layer9.0.conv.0.conv": {"out_channels": 8}}),
            "entry 'backbone.layer9.0.conv.0.conv': mobilenet_v2 has no such layer",
        ),
        (
            _set("backbone.layer3.0.conv.2.conv", "out_channels", 56),
            "entry 'backbone.layer3.0.conv.2.conv' out_channels: 56 channels is above the supernet's 48",
        ),
        # layer3.1's output is summed with layer3.0's: one group, one width
        (
            _set("backbone.layer3.1.conv.2.bn", "out_channels", 40),
            r"entry 'backbone.layer3.1.conv.2.bn' out_channels: 40 channels, but .*layer3.0.conv.2.conv.* gives "
            r"channel group 's2' 48: layers tied by a residual",
        ),
        (_set("backbone.conv2.conv", "out_channels", 1280), "keeps this layer at 1920 \\(it is not prunable\\)"),
        (_set("backbone.layer2.0.conv.0.conv", "raw_out_channels", 96), "written for another supernet"),
        (_set("backbone.layer2.0.conv.0.conv", "in_channels", "eight"), "expected a whole number"),
    ],
)
def test_files_that_do_not_fit_exit_2_naming_the_first_offending_entry(tmp_path, edit, match):
    path = _yaml(tmp_path, edit)
    with pytest.raises(UserError, match=match):
        read_channels(path, mbv2())
    done = subprocess.run([sys.executable, "-m", "dslim.profile", "--recipe", "autoslim_mbv2", "--channels",
                           str(path)], capture_output=True, text=True, env=subprocess_env())  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and str(path) in done.stderr


def test_json_errors_name_the_group(tmp_path):
    net = mbv2()
    for channels, match in [({"stem": 8, "nope": 3}, "no channel group 'nope'"),
                            ({"s6": 488}, "group 's6': 488 channels is above the supernet's 480")]:  # fmt: skip
        path = tmp_path / "bad.json"
        path.write_text(json.dumps({"channels": channels}))
        with pytest.raises(UserError, match=match):
            read_channels(path, net)
    for text, match in [("{nope", "not readable JSON"), ("[1]", "is not a subnet")]:
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(UserError, match=match):
            read_channels(tmp_path / "bad.json", net)
    with pytest.raises(UserError, match="does not exist"):
        read_channels(tmp_path / "missing.yaml", net)


def test_dsnet_choices_are_enforced(tmp_path):
    net = create_supernet("ds_mobilenet_v1")
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"channels": {"s3": 250}}))
    with pytest.raises(UserError, match="group 's3'.*cannot have 250 channels; allowed"):
        read_channels(path, net)
