"""dslim: one toolkit for dynamic and slimmable networks (DS-Net, S-Net/US-Net, AutoSlim, DMCP, BlockDrop).

Importing dslim before torch (as every `python -m dslim.*` command does) makes torch's OpenMP threads sleep rather
than spin between operations (`OMP_WAIT_POLICY=PASSIVE`, unless set): on CPU the data loader's threads share the
cores with them, and spinning threads starved the loader and each other (a digits training step took 2.4 s
instead of 0.43 s on a loaded 2-core machine: `scripts/bench_data.py --stall`, docs/benchmarks.md).

The public names below are loaded on first use, not here: `dslim.deploy.runtime` (the onnxruntime runner) must
import on a machine without torch, and importing it runs this file first.
"""

import importlib
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch loads its OpenMP runtime

__version__ = "0.1.0"
__all__ = ["Subnet", "Supernet", "convert", "create_supernet", "extract", "load_subnet", "save_subnet"]

_HOMES = {
    "Subnet": "dslim.subnet",
    "Supernet": "dslim.models",
    "convert": "dslim.models.convert",
    "create_supernet": "dslim.models",
    "extract": "dslim.deploy.extraction",
    "load_subnet": "dslim.deploy.extraction",
    "save_subnet": "dslim.deploy.extraction",
}


def __getattr__(name: str) -> object:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'dslim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
