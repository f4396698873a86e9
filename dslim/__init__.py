"""dslim: one toolkit for dynamic and slimmable networks (DS-Net, S-Net/US-Net, AutoSlim, DMCP, BlockDrop)."""

from dslim import stages  # noqa: F401  (registers the built-in stages: `Config.stages` holds their settings)
from dslim.deploy import extract, load_subnet, save_subnet
from dslim.models import Supernet, create_supernet
from dslim.subnet import Subnet

__version__ = "0.1.0"
__all__ = ["Subnet", "Supernet", "create_supernet", "extract", "load_subnet", "save_subnet"]
