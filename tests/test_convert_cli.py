"""`--model.module` and `--model.weights` on the command line: a user's file profiled and trained, its pretrained
weights carried into the supernet, and every way it can go wrong refused early in one line with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dslim.cli.profile import main
from dslim.config import ModelConfig
from dslim.models.convert import ConvertedSupernet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from conftest import PYTHON, subprocess_env  # noqa: E402

EXAMPLE = f"{ROOT / 'examples' / 'my_cnn.py'}:MyCNN"

BROKEN = """
import torch
from torch import nn

class DataDependent(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.conv(x)
        if x.sum() > 0:
            x = -x
        return self.fc(x.mean((2, 3)))

class Gray(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 8, 3), nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))

class Rolled(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(torch.roll(self.conv(x), 1, 1).mean((2, 3)))

def needs_depth(depth, num_classes=10):
    raise ValueError("depth must be positive")
"""


def profile(capsys, *args: str) -> tuple[int, str, str]:
    """`python -m dslim.profile ...` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        main(["--model.input-size", "32", "--model.num-classes", "10", *args])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_profile_a_users_file_without_a_recipe(capsys):
    code, stdout, stderr = profile(capsys, "--model.module", EXAMPLE, "--widths", "0.5", "1.0", "--json")
    assert code == 0, stderr
    rows = json.loads(stdout)
    assert [r["subnet"] for r in rows] == ["0.5", "1.0"]
    assert rows[0]["macs"] < rows[1]["macs"] / 3  # about a quarter: every conv is narrower on both sides


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "broken.py"
    path.write_text(BROKEN)
    return path


@pytest.mark.parametrize(
    ("module", "extra", "says"),
    [
        ("{b}:DataDependent", (), "cannot be traced by torch.fx"),
        ("{b}:Gray", (), "does not run on an input of shape (2, 3, 32, 32)"),
        ("{b}:Rolled", (), "has no channel that dslim can slice"),
        ("{b}:needs_depth", ("--model.module-args", "depth=3"), "needs_depth(depth, num_classes) raised ValueError"),
        ("{b}:Missing", (), "has no class or function Missing"),
        ("{b}", (), "give FILE.py:NAME"),
        ("nowhere/at_all.py:Net", (), "no such file"),
        (EXAMPLE, ("--model.weights", "nothing.pt"), "--model.weights nothing.pt: no such file"),
        (EXAMPLE, ("--model.max-width", "1.5"), "a converted model is at most its own width"),
    ],
)
def test_bad_models_are_refused_in_one_line(capsys, broken, module, extra, says):
    code, _, stderr = profile(capsys, "--model.module", module.format(b=broken), *extra)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dslim: error: ") and says in lines[0], stderr


def test_the_command_exits_2_without_a_traceback(broken):
    """The same, as a program (one case: the others run in this process)."""
    cmd = [PYTHON, "-m", "dslim.profile", "--model.module", f"{broken}:Rolled", "--model.input-size", "32",
           "--model.num-classes", "10"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_weights_that_do_not_fit_are_refused(capsys, tmp_path):
    state = {"stem.0.weight": torch.zeros(4, 3, 3, 3)}
    save_file(state, tmp_path / "w.safetensors")
    code, _, stderr = profile(capsys, "--model.module", EXAMPLE, "--model.weights", str(tmp_path / "w.safetensors"))
    assert code == 2 and "does not fit" in stderr


@pytest.mark.parametrize("kind", ["safetensors", "torch"])
def test_pretrained_weights_are_the_largest_subnet(tmp_path, kind):
    sys.path.insert(0, str(ROOT / "examples"))
    from my_cnn import MyCNN

    torch.manual_seed(1)
    model = MyCNN()
    with torch.no_grad():
        model.train()(torch.randn(16, 3, 32, 32))  # statistics of their own
        for p in model.parameters():
            p.add_(0.05)
    if kind == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(model.state_dict(), path)
    else:  # a training checkpoint as many scripts write it
        path = tmp_path / "w.pth"
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    cfg = ModelConfig(module=EXAMPLE, weights=str(path), num_classes=10, input_size=32, bn="switchable",
                      widths=(0.5, 1.0))  # fmt: skip
    net = ConvertedSupernet.from_config(cfg)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad(), net.using(net.largest(), train=False):
        torch.testing.assert_close(net(x), model.eval()(x), atol=1e-5, rtol=1e-5)


def test_a_dmcp_recipe_builds_a_users_model():
    """`dmcp_digits` prunes MobileNet v2's last 1x1 conv (`prune_head`); a converted model prunes every layer it
    can already, so the recipe's setting holds for it instead of being refused (as it is for a ResNet)."""
    from dataclasses import replace

    from dslim import recipes
    from dslim.models import from_config

    cfg = recipes.load("dmcp_digits").model
    assert cfg.prune_head
    net = from_config(replace(cfg, module=EXAMPLE))
    assert net.arch == "converted" and net.largest() == net.resolve("1.0")
