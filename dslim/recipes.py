"""Recipes: small Python files whose `recipe()` returns a `Config`, found by name or by path.

Shipped recipes live in the repository's `recipes/` folder, installed as the package `dslim._recipes`, so they
are found after a normal install from any working directory. Importing this module imports `dslim.stages` (which
registers the built-in stages), so a recipe's `Config` holds every stage's settings.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from dslim.config import Config
from dslim.errors import UserError
from dslim.stages import validate as validate_stages


def recipe_dir() -> Path:
    """The recipes shipped with the `dslim` package in use: the installed copy beside it, else (a source checkout,
    an editable install) the checkout's `recipes/`. Looked up by path, not by importing `dslim._recipes`: an
    editable install maps that name to its own checkout, whichever checkout the running code comes from."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_recipes", here.parent / "recipes"):
        if (candidate / "__init__.py").is_file():
            return candidate
    import dslim._recipes as shipped

    return Path(shipped.__file__).parent


def names() -> list[str]:
    return sorted(p.stem for p in recipe_dir().glob("*.py") if not p.name.startswith("_"))


def recipe_path(name_or_path: str) -> Path:
    """The file a `--recipe` argument means: a shipped name, or a path to the user's own file."""
    if name_or_path.endswith(".py") or "/" in name_or_path:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise UserError(f"recipe file {name_or_path!r} does not exist")
        return path
    path = recipe_dir() / f"{name_or_path}.py"
    if not path.is_file():
        raise UserError(f"unknown recipe {name_or_path!r}; available: {', '.join(names())} (or a path to a .py file)")
    return path


def load(name_or_path: str) -> Config:
    """Execute a recipe file and return its validated `Config`."""
    path = recipe_path(name_or_path)
    module_name = f"dslim_recipe_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        build = getattr(module, "recipe", None)
        if not callable(build):
            raise UserError(f"recipe {path} must define a function `recipe()` returning a dslim.config.Config")
        config = build()
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"recipe {path} is malformed: {type(e).__name__}: {e}") from None
    finally:
        sys.modules.pop(module_name, None)
    if not isinstance(config, Config):
        raise UserError(f"recipe {path}: recipe() returned {type(config).__name__}, not a dslim.config.Config")
    validate(config, str(path))
    return config


def validate(config: Config, where: str = "config") -> None:
    """Check what the types cannot, before any work: bounds, the model, and each pipeline stage's settings."""
    validate_stages(config, where=where)
