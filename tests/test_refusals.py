"""A refusal leaves nothing behind, and `--from` is checked before any work (issue #17).

Every check that can refuse a training command runs before its first byte is written: the run directory (and its
config.json) exists only once the run is accepted, so running again with the fix the message asks for is never
refused as "started with another config". An artifact given with `--from` must fit the run's config (classes,
architecture, widths); a classifier for another number of classes is replaced only when asked to.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_bad_inputs import TINY, assert_user_error, run, snapshot

import dslim


def images(root: Path, per_class: int = 12, bad: dict[str, bytes] | None = None) -> Path:
    """A two-class ImageFolder of tiny PNGs; `bad` adds files (relative name -> bytes) to its training split."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 2)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    for name, data in (bad or {}).items():
        (root / "train" / name).write_bytes(data)
    return root


def supernet_file(path: Path, **kwargs: object) -> Path:
    """A supernet artifact of the given model arguments (TINY's model unless changed)."""
    from test_export_cli import make_run

    from dslim.config import ModelConfig

    model = {"arch": "mobilenet_v1", "num_classes": 10, "input_size": 32, "max_width": 0.25, "widths": (0.25,),
             "width_range": (0.25, 0.25), "bn": "calibrated", **kwargs}  # fmt: skip
    run_dir, _ = make_run(path.parent / f"{path.stem}-run", model=ModelConfig(**model))
    (run_dir / "supernet" / "model.safetensors").rename(path)
    return path


def train(tmp_path: Path, cache: Path, *args: str, out: Path | None = None, recipe: tuple[str, ...] = TINY):
    out = out or tmp_path / "run"
    return run("dslim.train", *recipe, "--out-dir", str(out), "--data.cache-dir", str(cache), *args, cwd=tmp_path)


AUTOSLIM = ("--recipe", "autoslim_digits", "--model.max-width", "0.25", "--model.widths", "0.25",
            "--data.holdout", "60")  # fmt: skip


MINE = f"{Path(dslim.__file__).parents[1] / 'examples' / 'my_cnn.py'}:MyCNN"
"""The user's own model of docs/your-model.md."""
CONVERTED = (*TINY, "--model.module", MINE, "--model.max-width", "1.0")


def _converted_file(path: Path, classes: int) -> Path:
    """A supernet artifact of the user's model converted (built for `classes` classes)."""
    return supernet_file(path, module=MINE, module_args=("width=4",), num_classes=classes, max_width=1.0,
                         widths=(0.25, 1.0), width_range=(0.25, 1.0))  # fmt: skip


def _weights(tmp_path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({"stem.0.weight": torch.zeros(4, 3, 3, 3)}, tmp_path / "other.safetensors")
    return tmp_path / "other.safetensors"


def _garbage(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    return path


CASES = {
    # name: (recipe and its settings, bad arguments made in tmp_path, words the one line must hold)
    "holdout too large": (TINY, lambda t: ("--data.holdout", "1400"), ("--data.holdout",)),
    "batch larger than the data": (TINY, lambda t: ("--data.batch-size", "1500"), ("batch",)),
    "batch larger than a small folder": (
        TINY, lambda t: ("--data.root", str(images(t / "few", per_class=3)), "--data.batch-size", "8"), ("batch",)),
    "corrupt image": (
        TINY, lambda t: ("--data.root", str(images(t / "bad", bad={"a/bad.png": b"\x89PNG\r\n\x1a\n" + b"cut" * 20})),
                         "--data.batch-size", "4"), ("bad.png",)),
    "--from not an artifact": (TINY, lambda t: ("--from", str(_garbage(t))), ("--from", "garbage.safetensors")),
    "--from of other widths": (
        TINY, lambda t: ("--from", str(supernet_file(t / "wider.safetensors", max_width=0.5, widths=(0.25, 0.5),
                                                     width_range=(0.25, 0.5)))), ("--from", "width")),
    "--from with fewer classes": (
        TINY, lambda t: ("--from", str(supernet_file(t / "five.safetensors", num_classes=5))),
        ("--from", "5 classes", "--from-new-classifier")),
    "AutoSlim target below the smallest subnet": (
        AUTOSLIM, lambda t: ("--stages.search.targets", "1000"), ("--stages.search.targets", "smallest")),
    "empty --model.widths with a width range": (TINY, lambda t: ("--model.widths",), ("--model.widths",)),
    # found beyond the list
    "gradient accumulation longer than an epoch": (
        TINY, lambda t: ("--stages.supernet.grad-accum", "1000"), ("--stages.supernet.grad-accum",)),
    "a stage with no supernet to start from": (TINY, lambda t: ("--stages", "evaluate"), ("evaluate", "--from")),
    "a corrupt JPEG, found while decoding": (
        TINY, lambda t: ("--data.root", str(images(t / "jpeg", bad={"a/bad.jpg": b"\xff\xd8\xff\xe0" + b"cut" * 20})),
                         "--data.batch-size", "4", "--data.loader", "pil"), ("bad.jpg",)),
    # the user's own model (--model.module, --model.weights): refused as early, leaving as little
    "--model.module with no such file": (
        (*TINY, "--model.max-width", "1.0"), lambda t: ("--model.module", "nowhere.py:Net"), ("no such file",)),
    "--model.module built for other classes": (
        CONVERTED, lambda t: ("--model.module-args", "num_classes=5"), ("5 classes", "--model.num-classes")),
    "--model.weights that do not fit": (
        CONVERTED, lambda t: ("--model.weights", str(_weights(t))), ("--model.weights", "does not fit")),
    "--from a converted model with fewer classes": (
        CONVERTED, lambda t: ("--model.module-args", "width=4", "--from", str(_converted_file(t / "c5.safetensors", 5)),
                              "--from-new-classifier"), ("converted model", "10-class")),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_a_refused_run_leaves_nothing_behind(tmp_path, digits_cache, case):
    recipe, make_args, words = CASES[case]
    args = make_args(tmp_path)
    before = snapshot(tmp_path)
    proc = train(tmp_path, digits_cache, *args, recipe=recipe)
    assert_user_error(proc, *words)
    assert not (tmp_path / "run").exists() and snapshot(tmp_path) == before


def test_running_again_with_the_fix_is_accepted(tmp_path, digits_cache):
    """The message's own advice, followed in the same `--out-dir`, runs (it was refused as another config)."""
    assert_user_error(train(tmp_path, digits_cache, "--stages", "supernet", "--data.batch-size", "1500"), "batch")
    done = train(tmp_path, digits_cache, "--stages", "supernet", "--data.batch-size", "256")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "supernet" / "model.safetensors").is_file()


def metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["dslim"])


def test_a_new_classifier_for_another_class_count_only_when_asked(tmp_path, digits_cache):
    """A bridgeable difference is bridged on request; one that the artifact simply brings (its BatchNorm, its named
    subnets: what an imported file is) is used and said, never silently."""
    five = supernet_file(tmp_path / "five.safetensors", num_classes=5, bn="switchable", width_range=None)
    done = train(tmp_path, digits_cache, "--stages", "supernet", "--from", str(five), "--from-new-classifier")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"starting from {five}" in done.stdout and "new classifier for 10 classes" in done.stdout, done.stdout
    assert "its switchable BatchNorm" in done.stdout and "not the config's (calibrated" in done.stdout, done.stdout
    assert metadata(tmp_path / "run" / "supernet" / "model.safetensors")["arch_kwargs"]["num_classes"] == 10
    # asked for when the classes agree: refused (nothing to bridge), before any work
    ten = supernet_file(tmp_path / "ten.safetensors")
    again = train(tmp_path, digits_cache, "--stages", "supernet", "--from", str(ten), "--from-new-classifier",
                  out=tmp_path / "other")  # fmt: skip
    assert_user_error(again, "--from-new-classifier")
    assert not (tmp_path / "other").exists()


def test_from_is_not_silently_ignored_when_every_stage_is_finished(tmp_path, digits_cache):
    """Re-running a finished command with `--from` (or the same command again) does no work and says that F was
    not used, exit 0: a run continues from its own progress, as Accelerate's `load_state` and timm's `--resume`
    do, rather than from initial weights (`--from` only ever seeds a stage that has not started)."""
    ten = supernet_file(tmp_path / "ten.safetensors")
    first = train(tmp_path, digits_cache, "--stages", "supernet")
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(tmp_path / "run")
    again = train(tmp_path, digits_cache, "--stages", "supernet", "--from", str(ten))
    assert again.returncode == 0, again.stderr[-3000:]
    said = again.stdout + again.stderr
    assert f"--from {ten}" in said and "not used" in said and "supernet" in said, said
    after = snapshot(tmp_path / "run")
    assert {p: b for p, b in after.items() if p.name != "config.json"} == {
        p: b for p, b in before.items() if p.name != "config.json"
    }
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["model"]["max_width"] == 0.25


def test_a_recipe_path_without_py_is_read(tmp_path):
    from conftest import ROOT

    recipe = tmp_path / "my_recipe"
    recipe.write_text((ROOT / "recipes" / "usnet_digits.py").read_text())
    done = run("dslim.profile", "--recipe", str(recipe), "--widths", "0.5", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    assert [r["subnet"] for r in json.loads(done.stdout)] == ["0.5"]
    (tmp_path / "notes").write_text("these are my notes, not a recipe\n")
    assert_user_error(run("dslim.profile", "--recipe", str(tmp_path / "notes")), "notes")
    assert_user_error(run("dslim.profile", "--recipe", str(tmp_path)), str(tmp_path))


def test_python_api_refuses_impossible_models():
    from dslim.errors import UserError

    for kwargs, words in [
        ({"widths": (-0.5,)}, "widths"),
        ({"widths": (0.0,)}, "widths"),
        ({"widths": (float("nan"),)}, "widths"),
        ({"widths": ()}, "widths"),
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": -3}, "num_classes"),
        ({"max_width": -1.0}, "max_width"),
    ]:
        with pytest.raises(UserError, match=words) as e:
            dslim.create_supernet("mobilenet_v1", **{"num_classes": 10, **kwargs})
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="num_classes"):
        dslim.create_supernet("ds_mobilenet_v1", num_classes=0)
    with pytest.raises(UserError, match="num_classes"):
        dslim.create_supernet("cifar_resnet32", num_classes=0)


def test_save_subnet_refuses_what_load_subnet_would(tmp_path):
    from dslim.errors import UserError

    net = dslim.create_supernet("mobilenet_v1", num_classes=10, max_width=0.25, widths=(0.25,))
    for size in (0, -32, 5000):
        with pytest.raises(UserError, match="input_size"):
            dslim.save_subnet(net, net.largest(), tmp_path / "s.safetensors", input_size=size)
    assert not list(tmp_path.iterdir())
    dslim.save_subnet(net, net.largest(), tmp_path / "s.safetensors", input_size=32)
    assert dslim.load_subnet(tmp_path / "s.safetensors").input_size == 32
