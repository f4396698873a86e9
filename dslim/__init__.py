"""dslim: one toolkit for dynamic and slimmable networks (DS-Net, S-Net/US-Net, AutoSlim, DMCP, BlockDrop).

Importing dslim before torch (as every `python -m dslim.*` command does) makes torch's OpenMP threads sleep rather
than spin between operations (`OMP_WAIT_POLICY=PASSIVE`, unless set): on CPU the data loader's threads share the
cores with them, and spinning threads starved the loader and each other (a digits training step took 2.4 s
instead of 0.43 s on a loaded 2-core machine: `scripts/bench_data.py --stall`, docs/benchmarks.md).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch loads its OpenMP runtime

from dslim import stages  # noqa: E402, F401  (registers the built-in stages: `Config.stages` holds their settings)
from dslim.deploy import extract, load_subnet, save_subnet  # noqa: E402
from dslim.models import Supernet, create_supernet  # noqa: E402
from dslim.models.convert import convert  # noqa: E402
from dslim.subnet import Subnet  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Subnet", "Supernet", "convert", "create_supernet", "extract", "load_subnet", "save_subnet"]
