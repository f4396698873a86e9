"""`python -m dslim.profile`: the contract other tools rely on, and one-line errors with exit code 2."""

import json
import subprocess
import sys

import pytest


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "dslim.profile", *args], capture_output=True, text=True, cwd=cwd)


def test_dsnet_json_contract(tmp_path):
    out = run("--recipe", "dsnet_mbv1", "--json", cwd=tmp_path)  # from another directory
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["subnet"] for r in rows] == ["largest", "smallest"] + [f"uniform-{r}" for r in range(14)]
    assert all(set(r) == {"subnet", "macs", "params"} and isinstance(r["macs"], int) for r in rows)
    assert round(rows[2 + 3]["macs"] / 1e5) == 1996  # uniform-3: 199.6 M


def test_usnet_any_width_in_range():
    rows = json.loads(run("--recipe", "usnet_mbv2", "--widths", "0.35", "0.42", "1.0", "--json").stdout)
    assert [r["subnet"] for r in rows] == ["0.35", "0.42", "1.0"]
    assert rows[0]["macs"] < rows[1]["macs"] < rows[2]["macs"]
    assert rows[2]["params"] == 3_504_872  # MobileNetV2 1.0, sliced


def test_override_changes_the_profile():
    small = json.loads(run("--recipe", "snet_mbv1", "--model.input-size", "112", "--json").stdout)
    assert small[-1]["macs"] < 569e6 / 3


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--recipe", "usnet_mbv1", "--widths", "0.2"], "outside"),
        (["--recipe", "snet_mbv1", "--widths", "0.3"], "not one of"),
        (["--recipe", "dsnet_mbv1", "--widths", "uniform-14"], "unknown subnet"),
        (["--recipe", "nope"], "unknown recipe"),
        ([], "--recipe is required"),
    ],
)
def test_errors_exit_2_with_one_line(args, match):
    out = run(*args)
    assert out.returncode == 2
    assert match in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_help_shows_the_recipe_defaults():
    out = run("--recipe", "usnet_mbv2", "--help")
    assert out.returncode == 0
    assert "mobilenet_v2" in out.stdout and "--model.width-range" in out.stdout


def test_the_dslim_console_script_runs_the_same_command(tmp_path):
    """`dslim profile ...` (the console script, here `python -m dslim.cli`) is `python -m dslim.profile ...`."""
    args = ["--recipe", "usnet_mbv1", "--widths", "0.5", "1.0", "--json"]
    script = subprocess.run([sys.executable, "-m", "dslim.cli", "profile", *args], capture_output=True, text=True,
                            cwd=tmp_path)  # fmt: skip
    assert script.returncode == 0, script.stderr
    assert json.loads(script.stdout) == json.loads(run(*args, cwd=tmp_path).stdout)
    unknown = subprocess.run([sys.executable, "-m", "dslim.cli", "prune"], capture_output=True, text=True)
    assert unknown.returncode == 2 and unknown.stderr.startswith("dslim: error: unknown command 'prune'")
    assert "available: train, evaluate, export, profile, latency, import" in unknown.stderr
