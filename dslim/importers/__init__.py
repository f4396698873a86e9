"""Importers of the originals' checkpoints: one module per project's format, each `load(path, ...) -> (supernet,
metadata)`. They read with `torch.load(weights_only=True)` and a minimal allow-list (`importers.common`)."""

from dslim.importers import dsnet

KINDS = {"dsnet": dsnet}
