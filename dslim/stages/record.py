"""A run's record, `config.json`: the resolved config, argv and versions, and the argv of every later invocation.

Re-running in the same directory with another config is refused, except for changes that cannot alter what is
already computed: `pipeline`, settings that do not change results (`HARMLESS`), the settings of stages that have not
started, and anything at all while no stage has started (nothing is computed yet: a run killed in its first
seconds). config.json then takes the new config and keeps the earlier argv in `history`.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence

import torch

from dslim.config import Config, config_json
from dslim.errors import UserError
from dslim.io import write_json
from dslim.io.readers import RUN_RECORD, read_json
from dslim.stages.layout import RunLayout
from dslim.stages.registry import STAGES

HARMLESS = ("pipeline", "log_with", "tensorboard", "data.workers", "data.cache_dir", "data.eval_batch_size")
"""Config fields that may change between invocations on one run directory: they cannot change any result
(`tensorboard`: how runs of an earlier dslim recorded `--log-with tensorboard`)."""


def _differences(old: object, new: object, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _versions() -> dict[str, str]:
    import accelerate

    import dslim

    return {"python": platform.python_version(), "torch": torch.__version__, "accelerate": accelerate.__version__,
            "dslim": dslim.__version__}  # fmt: skip


def read_record(layout: RunLayout) -> dict:
    """The run's config.json, checked (`dslim.io.readers.RUN_RECORD`)."""
    return read_json(layout.config, "run record", RUN_RECORD)  # type: ignore[return-value]


def check_record(layout: RunLayout, config: Config, recipe: str, argv: Sequence[str]) -> dict | None:
    """The record to write for this invocation (None: the one there stays as it is), or a `UserError` when the run
    was started with a config this one may not replace (see the module's rules). Writes nothing."""
    record: dict = {"config": config_json(config), "recipe": recipe, "argv": list(argv),
                    "versions": _versions(), "history": []}  # fmt: skip
    if not layout.config.is_file():
        return record
    old = read_record(layout)
    changed = _differences(old["config"], record["config"])
    started = [s for s in STAGES.names() if layout.started(s)]
    fixed = [
        c for c in changed
        if started and not any(c == h or c.startswith(h + ".") for h in HARMLESS)
        and not (c.startswith("stages.") and c.split(".")[1] in STAGES.names() and c.split(".")[1] not in started)
    ]  # fmt: skip
    if fixed:
        shown = ", ".join(fixed[:4]) + (" ..." if len(fixed) > 4 else "")
        raise UserError(
            f"{layout.root} was started with another config (differs in {shown}); rerun with the same recipe and "
            f"overrides (see {layout.config}), or use another --out-dir"
        )
    record["history"] = [*old.get("history", []), old.get("argv")]
    return record if changed else None


def write_record(layout: RunLayout, record: dict) -> None:
    write_json(layout.config, record)
