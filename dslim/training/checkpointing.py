"""Resumable checkpoints of a training stage: written whole or not at all, read back exactly.

A checkpoint is the folder `<state_dir>/ckpt-<step>`: `accelerator.save_state` (model, main optimizer, scaler, RNG
of every process) plus `trainer.json` (where in which epoch), the optimizers of the other parameter sets
(`optimizer-<set>.safetensors`: they live outside Accelerate) and `ema.safetensors`. It is written into a hidden
folder renamed into place once complete, so a crash never leaves a checkpoint that looks finished.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

from dslim.io.artifacts import load_tensors, save_tensors


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's state as safetensors tensors plus JSON (param groups and non-tensor state)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for i, entry in state["state"].items():
        for k, v in entry.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{i}.{k}"] = v
            else:
                scalars[f"{i}.{k}"] = v
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        i, k = name.split(".", 1)
        state.setdefault(int(i), {})[k] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def checkpoints(state_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not state_dir.is_dir():
        return []
    return sorted(p for p in state_dir.glob("ckpt-*") if p.is_dir())


def save_checkpoint(
    accelerator: Accelerator,
    state_dir: Path,
    step: int,
    state: dict,
    optimizers: Mapping[str, torch.optim.Optimizer],
    ema: nn.Module | None,
    keep_last: int,
) -> None:
    """Checkpoint optimizer step `step` (a collective: every process calls it): `state` is `trainer.json`,
    `optimizers` those of the sets outside Accelerate, by set name. Only the newest `keep_last` are kept."""
    final = state_dir / f"ckpt-{step:09d}"
    if final.exists():
        return
    tmp = state_dir / f".tmp-ckpt-{step:09d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every process's files are in before the folder is renamed
    if accelerator.is_main_process:
        for name, optimizer in optimizers.items():
            tensors, meta = _optimizer_tensors(optimizer)
            save_tensors(tensors, tmp / f"optimizer-{name}.safetensors", meta)
        if ema is not None:
            save_tensors(ema.state_dict(), tmp / "ema.safetensors", {"stage": state["stage"], "step": step})
        (tmp / "trainer.json").write_text(json.dumps(state))
        os.replace(tmp, final)
        for old in checkpoints(state_dir)[: -max(keep_last, 1)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def latest_checkpoint(state_dir: Path, accelerator: Accelerator) -> tuple[Path, dict] | None:
    """The newest complete checkpoint and its `trainer.json`, if any; unfinished ones (a crash while saving) are
    removed."""
    found = checkpoints(state_dir)
    if accelerator.is_main_process:
        for stale in state_dir.glob(".tmp-ckpt-*"):
            shutil.rmtree(stale, ignore_errors=True)
    if not found:
        return None
    return found[-1], json.loads((found[-1] / "trainer.json").read_text())


def load_checkpoint(
    accelerator: Accelerator, path: Path, optimizers: Mapping[str, torch.optim.Optimizer], ema: nn.Module | None
) -> None:
    """Restore what `save_checkpoint` wrote at `path` into the prepared model, the `optimizers` and the `ema`."""
    accelerator.load_state(str(path))
    for name, optimizer in optimizers.items():
        _load_optimizer(optimizer, *load_tensors(path / f"optimizer-{name}.safetensors"))
    if ema is not None:
        tensors, _ = load_tensors(path / "ema.safetensors")
        ema.load_state_dict(tensors)
