"""Every shipped recipe loads and validates; recipes are found by name or path; bad ones fail clearly."""

import dataclasses

import pytest

from dslim import recipes
from dslim.config import Config, replace
from dslim.errors import UserError
from dslim.models import from_config

SHIPPED = [
    "dsnet_mbv1",
    "dsnet_digits",
    "snet_mbv1",
    "snet_mbv2",
    "snet_resnet50",
    "usnet_mbv1",
    "usnet_mbv2",
    "blockdrop_r110_c10",
    "blockdrop_r32_c10",
    "blockdrop_r101_imagenet",
    "blockdrop_digits",
    "dmcp_mbv2",
    "dmcp_resnet18",
    "dmcp_resnet50",
    "dmcp_digits",
]


def test_the_issue_recipes_are_shipped():
    assert set(SHIPPED) <= set(recipes.names())


@pytest.mark.parametrize("name", recipes.names())
def test_every_shipped_recipe_loads_and_builds(name):
    config = recipes.load(name)
    assert isinstance(config, Config)
    net = from_config(config.model)
    assert net.named_subnets(), name
    hash(config)  # frozen all the way down


def test_recipe_by_path(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(
        "from dslim.config import replace\nfrom dslim.recipes import load\n\n"
        "def recipe():\n    return replace(load('snet_mbv1'), **{'model.num_classes': 10})\n"
    )
    assert recipes.load(str(path)).model.num_classes == 10


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("def recipe(:\n", "malformed"),
        ("x = 1\n", "must define a function `recipe"),
        ("def recipe():\n    return 3\n", "returned int"),
        (
            "from dslim.config import Config, ModelConfig\ndef recipe():\n    return Config(ModelConfig(arch='vgg'))\n",
            "unknown architecture 'vgg'",
        ),
    ],
)
def test_bad_recipe_files(tmp_path, text, match):
    path = tmp_path / "bad.py"
    path.write_text(text)
    with pytest.raises(UserError, match=match):
        recipes.load(str(path))


def test_unknown_recipe_lists_names():
    with pytest.raises(UserError, match="available: .*dsnet_mbv1"):
        recipes.load("dsnet_mbv9")


def test_dotted_replace():
    c = replace(Config(), **{"model.arch": "resnet50", "stages.supernet.optim.lr": 0.3, "seed": 4})
    assert (c.model.arch, c.stages.supernet.optim.lr, c.seed) == ("resnet50", 0.3, 4)
    assert dataclasses.asdict(c)["data"] == dataclasses.asdict(Config().data)
