"""Bring your own model: `convert(model, example)` makes any traceable CNN a slimmable `dslim.Supernet`.

`trace` (torch.fx) -> `channels` (which channels must be sliced together, on the example input) -> `groups`
(channel groups, ranks, layouts) -> `supernet` (`ConvertedSupernet`, rebuilt from the stored graph alone);
`load` reads `--model.module` and `--model.weights` for the commands; `convert` and `report` hold the steps between.
"""

from dslim.models.convert.supernet import ConvertedSupernet, convert

__all__ = ["ConvertedSupernet", "convert"]
