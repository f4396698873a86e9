"""Supernets assembled from `dslim.nn`, found by name through the registry (`mnasnet` lives with MobileNet v2)."""

from dslim.models import cifar_resnet, ds_mobilenet_v1, mobilenet_v1, mobilenet_v2, resnet  # noqa: F401  (registers them)
from dslim.models.base import Supernet
from dslim.models.convert import supernet as _converted  # noqa: F401  (registers `converted`)
from dslim.models.registry import create_supernet, from_config, names, register

__all__ = ["Supernet", "create_supernet", "from_config", "names", "register"]
