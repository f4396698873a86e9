"""Model folders, as the Hugging Face Hub holds models: `model.safetensors`, `config.json` (the card), `README.md`
(the model card, `dslim.deploy.model_card`), the run's `pareto.png`, and for a whole supernet `subnets.json` (its
slices, in the schema of a run's named-subnets files). `dslim.load_subnet(DIR)` reads the folder back (only its
safetensors file and that file's JSON metadata); `huggingface_hub.upload_folder(folder_path=DIR, repo_id=...)`
publishes it as it is. A folder is written whole, then moved into place, marked as dslim's
(`dslim.io.outputs.write_folder`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from dslim.deploy.model_card import PLOT, readme
from dslim.io import write_json, write_text
from dslim.io.outputs import write_folder as write_marked

MODEL = "model.safetensors"


def write_folder(
    out: str | os.PathLike, card: dict, name: str, save_model: Callable[[Path], None], run_dir: Path | None
) -> dict:
    """Write the model folder `out`: `save_model(path)` writes the weights, `card` (from `dslim.deploy.card`) becomes
    `config.json` and `README.md`; the run's Pareto plot is copied in. Returns the card as written."""
    out = Path(out)
    plot = run_dir is not None and (run_dir / PLOT).is_file()
    files = {"safetensors": MODEL, "card": "README.md", **({"subnets": "subnets.json"} if card.get("supernet") else {}),
             **({"plot": PLOT} if plot else {})}  # fmt: skip
    card = {**card, "files": files}

    def fill(tmp: Path) -> None:
        save_model(tmp / MODEL)
        write_json(tmp / "config.json", card)
        if card.get("supernet"):
            slices = {n: {"subnet": s["subnet"], "macs": s["macs"], "params": s["params"],
                          **({k: s["accuracy"][k] for k in ("top1", "top5")} if s.get("accuracy") else {})}
                      for n, s in card["slices"].items()}  # fmt: skip
            write_json(tmp / "subnets.json", slices)
        if plot:
            shutil.copyfile(run_dir / PLOT, tmp / PLOT)  # type: ignore[operator]
        write_text(tmp / "README.md", readme(card, name, out.name, run_dir, plot))

    write_marked(out, "model folder", fill)
    return card
