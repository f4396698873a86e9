"""`python -m dslim.export --run D (--subnet NAME | --channels FILE | --dynamic) [--out F] [--format FMT] [...]`.

The subnet of the latest finished stage's supernet is written with physically sliced weights and its own BatchNorm
statistics: as safetensors (`dslim.load_subnet(F)` rebuilds it with nothing else) or as one ONNX graph with a
dynamic batch axis. The subnet is a name (`--subnet`), or a channel configuration (`--channels`: dslim subnet
`.json` or mmrazor channel-config `.yaml`). `--dynamic` exports the trained dynamic model instead (DS-Net's gate),
routing each input: as safetensors (`load_subnet` gives a `RoutedNet`) or, for ONNX, as a folder: one graph per
part (DS-Net: the shared prefix with the gate, one per route; BlockDrop: the policy, the stem, one per block) and
`routing.json`, which `dslim.deploy.runtime` runs. Next to
each model, a card (`F.config.json`, or `config.json` in the folder) records architecture, channels, classes, input
size, MACs, params, and accuracy and latency where the run measured them. With calibrated BatchNorm, a width the
artifact holds no statistics for (or a route of the dynamic model) is calibrated first from training batches
(`stages.evaluate.calibrate_batches`). The export stage writes its models through the same door
(`dslim.deploy.export.export_model`).

`--format folder` writes a model folder as the Hugging Face Hub holds one: `model.safetensors`, `config.json` (the
card), `README.md` (a model card: what the model is, how it was trained, the run's table of accuracy, MACs, params
and latency, the Pareto plot, how to load it) and `pareto.png`; `dslim.load_subnet(DIR)` loads it and
`huggingface_hub.upload_folder` publishes it. Without `--subnet`, `--channels` or `--dynamic`, the folder holds the
whole supernet: one checkpoint for every width, with the BatchNorm statistics of each slice (`--subnets`, default
every named subnet; any other width of a universally slimmable range is calibrated into it) and `subnets.json`;
`dslim.load_subnet(DIR, subnet=NAME)` gives any slice as a plain sliced module.

`--channels-out` writes the subnet's channel configuration: mmrazor 0.x YAML (mmcls layer names for MobileNetV2 and
ResNets) for `.yaml`, dslim's subnet JSON for `.json`; it needs no statistics, so it also works without `--out`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from dslim.errors import UserError, exits_cleanly


@dataclass(frozen=True)
class ExportCommand:
    run: str
    """Run directory (the `--out-dir` of `dslim.train`)."""
    out: str | None = None
    """Output: a `.safetensors` or `.onnx` file; with `--format folder` or `--dynamic --format onnx`, a folder."""
    subnet: str | None = None
    """Subnet to export: a name (`uniform-3`, `largest`, a name from the run's subnets files such as
    `autoslim-300M`) or a width (`0.75`, any width of a universally slimmable range)."""
    channels: str | None = None
    """Or a channel-configuration file naming the subnet (dslim subnet `.json`, mmrazor channel-config `.yaml`)."""
    dynamic: bool = False
    """Export the trained dynamic model (routing each input) instead of one subnet."""
    format: Literal["safetensors", "onnx", "folder"] = "safetensors"
    """File format: safetensors (for `dslim.load_subnet`), ONNX (for onnxruntime and other runtimes), or a model
    folder (safetensors, card, model card README: what the Hugging Face Hub holds)."""
    subnets: tuple[str, ...] = ()
    """With `--format folder` and no subnet: the slices the supernet folder holds statistics for (default: every
    named subnet of the run, those of its subnets files included)."""
    exporter: Literal["dynamo", "torchscript"] = "dynamo"
    """ONNX exporter: `dynamo` (torch.export, PyTorch's default) or `torchscript` (deprecated, much faster)."""
    channels_out: str | None = None
    """Also (or only) write the subnet's channel configuration here: mmrazor YAML (`.yaml`) or dslim JSON
    (`.json`)."""
    overwrite: bool = False
    """Replace an existing --out (or --channels-out) file, or an ONNX folder an earlier export wrote (only if it
    holds nothing else). A folder dslim did not write, a run's own files and the run itself are never replaced;
    inside a run directory, only a new name in its `export/` folder is written."""


def whole(cmd: ExportCommand) -> bool:
    """Whether the command exports the whole supernet (a folder of every slice) rather than one model."""
    return cmd.format == "folder" and cmd.subnet is None and cmd.channels is None and not cmd.dynamic


def check(cmd: ExportCommand) -> None:
    """Every problem with the options, before any work."""
    chosen = sum((cmd.subnet is not None, cmd.channels is not None, cmd.dynamic))
    if chosen > 1 or (chosen == 0 and not whole(cmd)):
        raise UserError("give one of --subnet NAME, --channels FILE or --dynamic (the routing model); with --format "
                        "folder, none of them exports the whole supernet")  # fmt: skip
    if cmd.subnets and not whole(cmd):
        raise UserError("--subnets names the slices of a whole supernet: give it with --format folder alone")
    if cmd.out is None and cmd.channels_out is None:
        raise UserError("give --out F (the model) and/or --channels-out F.yaml (its channel configuration)")
    if cmd.dynamic and cmd.channels_out is not None:
        raise UserError("--channels-out needs one subnet (--subnet or --channels), not --dynamic")
    if cmd.channels_out is not None and Path(cmd.channels_out).suffix.lower() not in (".json", ".yaml", ".yml"):
        raise UserError(f"--channels-out {cmd.channels_out!r}: name it .json (dslim subnet) or .yaml/.yml (mmrazor)")
    from dslim.deploy.card import card_path, read_card
    from dslim.io.outputs import check_output

    if cmd.channels_out is not None:
        check_output(cmd.channels_out, overwrite=cmd.overwrite, option="--channels-out")
    if cmd.out is None:
        if whole(cmd):
            raise UserError("give --out DIR: the folder to write the supernet to")
        return
    if cmd.format == "folder":
        out = Path(cmd.out)
        if out.suffix in (".onnx", ".safetensors", ".json"):
            raise UserError(f"--out {cmd.out!r}: --format folder writes a folder; give a folder name")
        check_output(cmd.out, overwrite=cmd.overwrite, folder=True)
        return
    folder = cmd.dynamic and cmd.format == "onnx"
    suffix = {"safetensors": ".safetensors", "onnx": ".onnx"}[cmd.format]
    if folder and Path(cmd.out).suffix in (".onnx", ".safetensors"):
        raise UserError(f"--out {cmd.out!r}: a dynamic model exports to ONNX as a folder; give a folder name")
    if not folder and (not cmd.out.endswith(suffix) or Path(cmd.out).name == suffix):
        raise UserError(f"--out {cmd.out!r} should end in {suffix} (--format {cmd.format}), after a file name")
    check_output(cmd.out, overwrite=cmd.overwrite, folder=folder)
    if not folder:  # its card: a file dslim keeps up to date beside the model, but not a user's file of that name
        card = card_path(cmd.out)
        check_output(card, overwrite=cmd.overwrite, own=read_card(card) is not None)
    if cmd.format == "onnx":
        from dslim.deploy.onnx import require

        require(cmd.exporter)


@exits_cleanly
def main(argv: Sequence[str] | None = None) -> None:
    cmd = tyro.cli(ExportCommand, args=sys.argv[1:] if argv is None else list(argv), description=__doc__)
    check(cmd)
    from dslim.deploy.card import card_path
    from dslim.deploy.export import export_model
    from dslim.io.channels import read_channels, write_channels
    from dslim.models.complexity import measure
    from dslim.models.registry import model_name
    from dslim.stages.evaluate import calibration_batches
    from dslim.stages.run import open_run

    run = open_run(cmd.run)
    net, config, size = run.supernet, run.config, run.config.model.input_size
    if whole(cmd):
        slices = {n: run.resolve(n) for n in cmd.subnets or run.default_names()}
        name, subnet = Path(cmd.out).name, slices  # type: ignore[arg-type]
    elif cmd.dynamic:
        if not net.is_dynamic:
            raise UserError(f"{net.arch} does not route per input: export one of its subnets with --subnet")
        if not net.router_trained:
            raise UserError(
                f"{cmd.run}'s router has not been trained yet: run the stage that trains it first (gate, policy)"
            )
        name, subnet = "dynamic", None
    elif cmd.channels is not None:
        name, subnet = Path(cmd.channels).stem, read_channels(cmd.channels, net)
    else:
        name, subnet = cmd.subnet, run.resolve(cmd.subnet)  # type: ignore[assignment, arg-type]
    if cmd.channels_out is not None:
        cost = measure(net, size, subnet)
        write_channels(cmd.channels_out, net, subnet)
        print(f"wrote {cmd.channels_out}: channel configuration of {model_name(config.model)} subnet {name}, "
              f"{cost.macs / 1e6:,.1f}M MACs, {cost.params / 1e6:,.3f}M params")  # fmt: skip
    if cmd.out is None:
        return
    card = export_model(net, config, name, subnet, {cmd.format: cmd.out}, calibrate_batches=calibration_batches(config),
                        run_dir=run.dir, recipe=run.recipe, exporter=cmd.exporter)  # fmt: skip
    if whole(cmd):
        macs = [s["macs"] / 1e6 for s in card["slices"].values()]
        print(f"wrote {cmd.out}: the whole {model_name(config.model)} supernet from {run.artifact.parent.name} with "
              f"{len(macs)} slices of {min(macs):,.1f}M to {max(macs):,.1f}M MACs at {size}px "
              "(model.safetensors, subnets.json, config.json, README.md)")  # fmt: skip
        return
    if subnet is None:
        macs = [r["macs"] / 1e6 for r in card["routes"].values()]
        what, cost_text = "dynamic model", f"routes of {min(macs):,.1f}M to {max(macs):,.1f}M MACs"
    else:
        what, cost_text = f"subnet {name}", f"{card['macs'] / 1e6:,.1f}M MACs"
    written = "" if cmd.format == "folder" else f" and {card_path(cmd.out).name}"
    print(f"wrote {cmd.out}{written}: {model_name(config.model)} {what} from "
          f"{run.artifact.parent.name}, {cost_text}, {card['params'] / 1e6:,.3f}M params at {size}px")  # fmt: skip


if __name__ == "__main__":
    main()
