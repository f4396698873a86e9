"""Resumable checkpoints of a training stage: written whole or not at all, read back exactly.

A checkpoint is the folder `<state_dir>/ckpt-<step>`: `accelerator.save_state` (model, main optimizer, scaler, RNG
of every process) plus `trainer.json` (where in which epoch), the optimizers of the other parameter sets
(`optimizer-<set>.safetensors`: they live outside Accelerate) and `ema.safetensors`. It is written into a hidden
folder renamed into place once complete, so a crash never leaves a checkpoint that looks finished; a disk that
fills while writing it ends in one line, the previous checkpoints kept. A checkpoint damaged afterwards (a file cut
short, zeroed or missing) is set aside when resuming (`damaged-ckpt-<step>`) and the one before it is used.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

from dslim.errors import UserError
from dslim.io.artifacts import load_tensors, save_tensors
from dslim.io.atomic import TEMPORARY, write_json, writing
from dslim.io.outputs import sweep
from dslim.io.readers import TRAINER_STATE, read_json


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
    tmp = state_dir / f"{TEMPORARY}ckpt-{step:09d}"
    try:
        with writing(final):
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
                write_json(tmp / "trainer.json", state)
                os.replace(tmp, final)
    finally:
        if accelerator.is_main_process and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if accelerator.is_main_process:
        for old in checkpoints(state_dir)[: -max(keep_last, 1)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def resume_checkpoint(
    accelerator: Accelerator,
    state_dir: Path,
    optimizers: Mapping[str, torch.optim.Optimizer],
    ema: nn.Module | None,
    check: Callable[[Path, dict], None],
) -> tuple[Path, dict] | None:
    """Restore the newest complete checkpoint into the prepared model, the `optimizers` and the `ema`; returns it
    and its `trainer.json` (None: there is none). `check(path, state)` refuses one written with other settings.

    A damaged checkpoint is said, set aside and the one before it tried; every process agrees on which one is used.
    When every one is damaged, a `UserError` says so (running again then starts the stage over)."""
    if accelerator.is_main_process:
        sweep([state_dir])  # a checkpoint a crash left unfinished
    found = checkpoints(state_dir)
    for path in reversed(found):
        state: dict = {}
        try:
            state = read_json(path / "trainer.json", "trainer state", TRAINER_STATE)  # type: ignore[assignment]
            reason = None
        except UserError as e:
            reason = str(e)
        if reason is None:
            check(path, state)
            reason = _load(accelerator, path, optimizers, ema)
        if accelerator.num_processes > 1:  # a file damaged on one process's disk counts for all
            failed = accelerator.reduce(torch.tensor([float(reason is not None)], device=accelerator.device), "max")
            reason = reason or ("damaged on another process" if failed.item() else None)
        if reason is None:
            return path, state
        aside = path.with_name(f"damaged-{path.name}")
        accelerator.print(f"{path} is damaged ({reason}); set aside as {aside.name}, using the checkpoint before it")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            os.replace(path, aside)
        accelerator.wait_for_everyone()
    if found:
        raise UserError(f"every checkpoint in {state_dir} is damaged (set aside as damaged-ckpt-*); run the same "
                        "command again to start the stage over")  # fmt: skip
    return None


def _load(
    accelerator: Accelerator, path: Path, optimizers: Mapping[str, torch.optim.Optimizer], ema: nn.Module | None
) -> str | None:
    """Restore what `save_checkpoint` wrote at `path`; the reason it cannot be, if it cannot (a damaged file)."""
    try:
        accelerator.load_state(str(path))
        for name, optimizer in optimizers.items():
            _load_optimizer(optimizer, *load_tensors(path / f"optimizer-{name}.safetensors"))
        if ema is not None:
            ema.load_state_dict(load_tensors(path / "ema.safetensors")[0])
    except Exception as e:  # noqa: BLE001  (each library reports a file cut short in its own way)
        return " ".join(str(e).split())[:160] or type(e).__name__
    return None
