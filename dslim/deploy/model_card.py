"""The `README.md` of a model folder: a Hugging Face model card written from the export card and the run's files.

Front matter (YAML, what the Hub indexes): `library_name: dslim`, tags, a license placeholder, `pipeline_tag` and
the accuracy as a `model-index` (one result, the run's validation split; a supernet folder lists each slice's
top-1 as a metric of its own). The body says what the model is, how it was trained (recipe, stages with their
epochs, optimizer and schedule, data and preprocessing), the run's table of accuracy, MACs, params and latency
(this model's rows in bold), the Pareto plot, and the Python that loads it. Every number comes from the card, the
run's `eval.json` or its `latency.json`; none is computed here.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from dslim.config import STAGE_SETTINGS
from dslim.deploy.card import run_report
from dslim.deploy.latency_table import LatencyTable
from dslim.errors import UserError

LICENSE_NOTE = "# placeholder: the license of these weights and of the data they were trained on"
PLOT = "pareto.png"


def _tags(card: dict) -> list[str]:
    recipe = (card.get("training") or {}).get("recipe")
    tags = ["dslim", "image-classification", "slimmable-networks", card["architecture"]]
    if recipe:
        tags.append(Path(recipe).stem)
    if card.get("dynamic") or card.get("dynamic_model"):
        tags.append("dynamic-neural-network")
    return tags


def _dataset(card: dict) -> str:
    root = str(((card.get("training") or {}).get("config") or {}).get("data", {}).get("root", "unknown"))
    return Path(root).name or root  # a name, never a local path


def _metrics(card: dict) -> list[dict]:
    """The model-index metrics: top-1 (and top-5) of the model, or of each slice of a supernet."""
    if card.get("supernet"):
        rated = {n: s["accuracy"] for n, s in card["slices"].items() if s.get("accuracy")}
        if card.get("dynamic_model") and card["dynamic_model"].get("accuracy"):
            rated["dynamic"] = card["dynamic_model"]["accuracy"]
        return [{"type": "accuracy", "name": f"top-1 accuracy (%), {n}", "value": a["top1"]} for n, a in rated.items()]
    accuracy = card.get("accuracy")
    if not accuracy:
        return []
    found = [{"type": "accuracy", "name": "top-1 accuracy (%)", "value": accuracy["top1"]}]
    if accuracy.get("top5") is not None:
        found.append({"type": "top-5-accuracy", "name": "top-5 accuracy (%)", "value": accuracy["top5"]})
    return found


def front_matter(card: dict, name: str) -> str:
    """The YAML front matter the Hub reads; the model-index result is called `name`."""
    meta: dict = {"library_name": "dslim", "license": "other", "tags": _tags(card),
                  "pipeline_tag": "image-classification"}  # fmt: skip
    metrics = _metrics(card)
    if metrics:
        dataset = _dataset(card)
        meta["model-index"] = [{"name": name, "results": [{
            "task": {"type": "image-classification", "name": "Image classification"},
            "dataset": {"name": dataset, "type": dataset, "split": "val"},
            "metrics": metrics,
        }]}]  # fmt: skip
    text = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return "---\n" + text.replace("license: other\n", f"license: other  {LICENSE_NOTE}\n") + "---\n"


def _architecture(card: dict) -> str:
    """The architecture's name; a converted model's is its file (the name only, never a local path) and class."""
    module = (((card.get("training") or {}).get("config") or {}).get("model") or {}).get("module")
    if card["architecture"] != "converted" or not isinstance(module, str):
        return f"`{card['architecture']}`"
    file, _, cls = module.rpartition(":")
    return f"`{Path(file).name}:{cls}` (converted by `dslim.convert`, loaded without its source)"


def _what(card: dict, name: str) -> str:
    arch, size, classes = _architecture(card), card["input_size"], card["num_classes"]
    if card.get("supernet"):
        return (f"One checkpoint for every width: the whole {arch} supernet `{name}`, its shared weights and the "
                f"BatchNorm statistics of each of its {len(card['slices'])} slices (below). Any slice loads as a plain "
                f"PyTorch module holding only its own channels, {classes} classes, {size}x{size} input.")  # fmt: skip
    if card.get("dynamic"):
        routes = ", ".join(card["routes"])
        return (f"The routing model of a {arch} supernet: it decides per image which route runs ({routes}) and runs "
                f"each group of images physically narrower or shallower; {classes} classes, {size}x{size} input. "
                "Loaded, it is a `dslim.models.routing.RoutedNet`.")  # fmt: skip
    return (f"Subnet `{name}` of a {arch} supernet, physically sliced: a plain PyTorch module of standard layers "
            f"holding only its own channels, with its own BatchNorm statistics; {card['macs'] / 1e6:,.2f}M MACs and "
            f"{card['params'] / 1e6:,.3f}M parameters per {size}x{size} image, {classes} classes.")  # fmt: skip


def _stage_row(name: str, settings: dict) -> str:
    doc = STAGE_SETTINGS.get(name)[1] if name in STAGE_SETTINGS.names() else ""
    if "epochs" not in settings:
        return f"| {name} | {doc} | | | |"
    optim, schedule = settings.get("optim", {}), settings.get("schedule", {})
    lr = f"{optim.get('name', '?')}, lr {optim.get('lr')} per {optim.get('lr_batch')} images"
    return f"| {name} | {doc} | {settings['epochs']} | {lr} | {schedule.get('kind', '')} |"


def _training(card: dict) -> list[str]:
    training = card.get("training") or {}
    config, recipe = training.get("config"), training.get("recipe")
    if not config:
        return ["How the weights were trained was not recorded."]
    data, model = config.get("data", {}), config.get("model", {})
    lines = [f"Trained with dslim {card.get('dslim_version', '')}" + (f", recipe `{Path(recipe).stem}`" if recipe
             else "") + f", in these stages (`{' -> '.join(config.get('pipeline', []))}`):", "",
             "| stage | what it does | epochs | optimizer | schedule |", "|---|---|---|---|---|"]  # fmt: skip
    lines += [_stage_row(s, config.get("stages", {}).get(s, {})) for s in config.get("pipeline", [])]
    pre = card.get("preprocessing", {})
    lines += ["", f"Data: `{_dataset(card)}` ({data.get('format')} layout), {model.get('num_classes')} classes, "
              f"{data.get('batch_size')} images per process per step, {data.get('augment')} augmentation"
              f"{', horizontal flips' if data.get('flip') else ''}"
              + (f", {data['holdout']} training images held out" if data.get("holdout") else "") + ". "
              f"Inputs: RGB in [0, 1], normalized by mean {pre.get('mean')} and std {pre.get('std')}; evaluation "
              f"resizes the shorter side to {pre.get('resize_shorter_side')} and crops the center "
              f"{card['input_size']}x{card['input_size']}.", "",
              "The whole resolved config is `training.config` in `config.json`; `python -m dslim.train --config "
              "config.json --out-dir D` trains it again."]  # fmt: skip
    return lines


def _latencies(card: dict, run_dir: Path | None) -> tuple[list[str], dict[str, dict]]:
    """Batch sizes and `{name: {batch: ms}}`: what the run's latency.json measured, by name, then the card's own."""
    found: dict[str, dict] = {}
    path = None if run_dir is None else run_dir / "latency.json"
    try:
        table = LatencyTable.read(path).data if path is not None and path.is_file() else {}
    except UserError:
        table = {}  # damaged: the card's own latency (checked where it was read) is all the table shows
    for part in ("subnets", "routes"):
        for name, row in table.get(part, {}).items():
            found.setdefault(name if part == "subnets" else f"route {name}", row["ms"])
    own = card.get("slices") or {card.get("subnet"): {"latency_ms": card.get("latency_ms")}}
    for name, entry in own.items():
        ms = entry.get("latency_ms")
        if name is not None and isinstance(ms, dict):
            found[name] = ms.get("ms", ms)
    batches = sorted({b for ms in found.values() for b in ms}, key=lambda b: int(b) if str(b).isdigit() else 0)
    return batches, found


def _results(card: dict, name: str, run_dir: Path | None) -> list[str]:
    report = run_report(run_dir) or {}
    rows = [r for r in report.get("subnets", []) if isinstance(r, dict) and "subnet" in r
            and isinstance(r.get("macs"), (int, float))]  # fmt: skip
    if card.get("supernet"):  # every slice, evaluated or not
        rows += [{"subnet": n, "macs": s["macs"], "params": s["params"]} for n, s in card["slices"].items()
                 if n not in {r["subnet"] for r in rows}]  # fmt: skip
    dynamic = report.get("dynamic")
    if isinstance(dynamic, dict) and "macs_mean" in dynamic:
        rows.append({**dynamic, "subnet": "dynamic", "macs": dynamic["macs_mean"], "params": None})
    if not rows:
        return ["The run has no evaluation (`eval.json`)."]
    batches, latency = _latencies(card, run_dir)
    mine = set(card["slices"]) | {"dynamic"} if card.get("supernet") else {"dynamic" if card.get("dynamic") else name}

    def cell(value: object, fmt: str) -> str:
        return "" if value is None else format(value, fmt)

    lines = ["| subnet | MACs (M) | params (M) | top-1 (%) | top-5 (%) |" + "".join(f" ms @{b} |" for b in batches),
             "|---|---|---|---|---|" + "---|" * len(batches)]  # fmt: skip
    for r in sorted(rows, key=lambda r: r["macs"]):
        label = f"**{r['subnet']}**" if r["subnet"] in mine else r["subnet"]
        ms = latency.get(r["subnet"], {})
        params = None if r.get("params") is None else r["params"] / 1e6
        cells = [label, cell(r["macs"] / 1e6, ",.2f"), cell(params, ",.3f"), cell(r.get("top1"), ".2f"),
                 cell(r.get("top5"), ".2f"), *(cell(ms.get(b), ".2f") for b in batches)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    info = card.get("latency_device") or card.get("latency_ms") or {}
    source = ("Top-1/top-5 on the validation split from the run's `eval.json`; MACs and parameters per image as "
              "`dslim.profile` counts them")  # fmt: skip
    if batches:
        where = f" on {info['device']} ({info.get('threads')} threads)" if info.get("device") else ""
        estimated = ", this model's estimated from per-layer times" if info.get("estimated") else ""
        source += f"; latency in ms per batch from the run's `latency.json` (`dslim.latency`){where}{estimated}"
    return [*lines, "", source + ". Bold: what this folder holds."]


def readme(card: dict, name: str, folder: str, run_dir: Path | None, plot: bool) -> str:
    """The model card of the folder `folder` holding `card`'s model (`name`); `plot`: the folder has pareto.png."""
    if card.get("supernet"):
        first = next(iter(card["slices"]), "NAME")
        load = f'model = dslim.load_subnet("{folder}", subnet="{first}")  # any slice below'
    else:
        load = f'model = dslim.load_subnet("{folder}")  # a plain torch.nn.Module in eval mode'
    parts = [
        front_matter(card, folder),
        f"# {folder}",
        "",
        _what(card, name),
        "",
        "```python",
        "import dslim",
        load,
        "```",
        "",
        "## Results",
        "",
        *_results(card, name, run_dir),
        "",
        *([f"![Top-1 against MACs of the run's subnets]({PLOT})", ""] if plot else []),
        "## Training",
        "",
        *_training(card),
        "",
        "## Files",
        "",
        "`model.safetensors` (weights and JSON metadata: nothing is unpickled), `config.json` (this card as data: "
        "architecture, channels, cost, accuracy, preprocessing, training)"
        + (", `subnets.json` (each slice's channels, MACs and parameters)" if card.get("supernet") else "")
        + (f", `{PLOT}`" if plot else "")
        + ". Published as is with `huggingface_hub.upload_folder`; `huggingface_hub.snapshot_download` brings it back.",
    ]
    return "\n".join(parts) + "\n"
