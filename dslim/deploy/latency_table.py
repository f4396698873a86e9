"""The latency table (`latency.json`, written by `dslim.deploy.latency.measure_table`), read and checked: what
latency budgets (AutoSlim's search, DMCP's target, DS-Net's gate penalty), an export card and `dslim.profile
--latency` ask latency of.

A subnet the table measured is answered exactly; any other is estimated from the table's per-layer fits (when it
has them) at that subnet's channel counts. `ExpectedLatency` is the same estimate as a function of channel counts
per group, differentiable in them (DMCP's expected latency, as `MacsModel` gives its expected MACs).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from dslim.deploy.extraction import extract
from dslim.deploy.latency import FORMAT, features, layer_shapes, predict
from dslim.errors import UserError
from dslim.io.readers import LATENCY, expect, read_json
from dslim.models.base import Supernet
from dslim.subnet import Subnet


class LatencyTable:
    """A `latency.json`, read and checked: what a search, a card or `profile` asks latency of."""

    def __init__(self, data: dict, where: str = "latency table") -> None:
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("subnets"), dict):
            raise UserError(f"{where} is not a dslim latency table (format {FORMAT!r}; written by dslim.latency)")
        self.data, self.where = data, where
        self._shapes: dict[Subnet, dict] = {}
        batches = data.get("batches")
        if not isinstance(batches, list) or not batches:
            raise UserError(f"{where}: `batches` must list the batch sizes measured")
        self._measured: dict[Subnet, tuple[str, dict]] = {}
        for part in ("routes", "subnets"):
            rows = data.get(part, {})
            if not isinstance(rows, dict):
                raise UserError(f"{where}: {part!r} must map names to entries")
            for name, row in rows.items():
                ok = isinstance(row, dict) and isinstance(row.get("ms"), dict) and "subnet" in row
                if not ok or not {str(b) for b in batches} <= set(row["ms"]):
                    raise UserError(f"{where}: entry {name!r} of {part!r} lacks its subnet or a batch's time")
                self._measured[Subnet.from_json(row["subnet"], f"{where}: {name!r}")] = (name, row["ms"])

    @classmethod
    def for_budgets(cls, path: str, supernet: Supernet, input_size: int, batch: int, option: str) -> LatencyTable:
        """The table at `path` for latency budgets at `batch`: it must describe this model at this input size,
        have measured `batch` and hold a per-layer table (budgets judge subnets no table measured). `option`:
        the setting that names the table, for the messages."""
        table = cls.read(path)
        table.check(supernet, input_size)
        if batch not in table.batches:
            raise UserError(f"{option} {path} measured batches {table.batches} only, not {batch}")
        if "layers" not in table.data:
            raise UserError(f"{path} has no per-layer table to estimate the subnets latency budgets judge: "
                            "measure it again with python -m dslim.latency ... --layers 8")  # fmt: skip
        return table

    @classmethod
    def read(cls, path: str | os.PathLike) -> LatencyTable:
        data = read_json(path, "latency table")
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UserError(f"{path} is not a dslim latency table (format {FORMAT!r}; written by dslim.latency)")
        expect(data, LATENCY, str(path))
        return cls(data, str(path))

    @property
    def batches(self) -> list[int]:
        return [int(b) for b in self.data["batches"]]

    @property
    def device(self) -> dict:
        return self.data.get("device", {})

    def check(self, supernet: Supernet, input_size: int) -> None:
        """The table must describe this architecture at this input size, each subnet it measured one of `supernet`'s."""
        if self.data.get("arch") != supernet.arch or self.data.get("input_size") != input_size:
            raise UserError(
                f"{self.where} was measured for {self.data.get('arch')} at {self.data.get('input_size')}px, not "
                f"{supernet.arch} at {input_size}px: measure this model with python -m dslim.latency"
            )
        for subnet, (name, _) in self._measured.items():
            try:
                supernet.check(subnet)
            except UserError as e:
                raise UserError(f"{self.where} was measured for another {supernet.arch} (its {name!r}: {e}); measure "
                                "this model with python -m dslim.latency") from None  # fmt: skip

    def measured(self, subnet: Subnet) -> dict[str, float] | None:
        """`{batch: ms}` if `subnet` (its channels and block mask) was measured."""
        found = self._measured.get(subnet)
        return None if found is None else found[1]

    def answers(self, subnet: Subnet) -> bool:
        """Whether `latency` can say something about `subnet` (measured, or a per-layer table to estimate it)."""
        return self.measured(subnet) is not None or "layers" in self.data

    def latency(self, subnet: Subnet, batch: int, supernet: Supernet | None = None) -> tuple[float, bool]:
        """`(ms, estimated)`: the measured latency of `subnet` at `batch`, else its estimate from the per-layer
        table (which needs the `supernet`), else a `UserError` saying how to get one."""
        if str(batch) not in map(str, self.data["batches"]):
            raise UserError(f"{self.where} has no measurements at batch {batch} (it has {self.data['batches']})")
        measured = self.measured(subnet)
        if measured is not None:
            return measured[str(batch)], False
        if "layers" not in self.data or supernet is None:
            names = ", ".join(name for name, _ in self._measured.values())
            raise UserError(
                f"{self.where} did not measure subnet {dict(subnet.items())} (it measured {names}); measure it "
                "(python -m dslim.latency --subnets NAME) or build a per-layer table (--layers N) to estimate any"
            )
        return self.estimate(supernet, subnet, batch), True

    def estimate(self, supernet: Supernet, subnet: Subnet, batch: int) -> float:
        """The per-layer table's prediction of `subnet`'s latency at `batch` (ms)."""
        if subnet not in self._shapes:
            self._shapes[subnet] = layer_shapes(extract(supernet, subnet, weights=False), self.data["input_size"])
        try:
            fits, (scale, offset) = self.data["layers"]["fits"], self.data["layers"]["calibration"][str(batch)]
            total = 0.0
            for key, (c_in, c_out) in self._shapes[subnet].items():
                if key not in fits:
                    raise UserError(f"{self.where}: layer {key} was never measured; rebuild the table with --layers")
                total += predict(fits[key][str(batch)], c_in, c_out)
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{self.where}: its per-layer table is malformed; measure it again") from None
        return max(0.0, scale * total + offset)


def estimate_errors(table: LatencyTable, supernet: Supernet) -> list[dict]:
    """The per-layer table's estimate of every subnet the table timed whole, against the time measured: a row per
    subnet (`subnet`, `held_out`: measured apart from the fit, `ms` and `estimate` per batch, `error`: the relative
    error per batch)."""
    layers, checks = table.data.get("layers", {}), table.data.get("checks", {})
    totals = layers.get("totals", {})
    timed = {**{n: (p, totals[n]) for n, p in layers.get("probes", {}).items() if n in totals},
             **{n: (r["subnet"], r["ms"]) for n, r in checks.items()}}  # fmt: skip
    rows = []
    for name, (subnet_json, ms) in timed.items():
        subnet = Subnet.from_json(subnet_json, f"{table.where}: {name!r}")
        estimate = {str(b): table.estimate(supernet, subnet, b) for b in table.batches}
        rows.append({"subnet": name, "held_out": name in checks, "ms": ms,
                     "estimate": estimate, "error": {b: estimate[b] / ms[b] - 1 for b in estimate}})  # fmt: skip
    return rows


def add_latency(rows: list[dict], net: Supernet, subnets: dict[str, Subnet], path: str, input_size: int) -> list[int]:
    """Each row's `latency_ms` (`{batch: ms}`, or None) and `latency_estimated` from the table at `path`; returns
    the table's batch sizes."""
    table = LatencyTable.read(path)
    table.check(net, input_size)
    for row in rows:
        subnet = subnets[row["subnet"]]
        found = {b: table.latency(subnet, b, net) for b in table.batches} if table.answers(subnet) else {}
        row["latency_ms"] = {str(b): round(ms, 4) for b, (ms, _) in found.items()} or None
        row["latency_estimated"] = any(estimated for _, estimated in found.values())
    return table.batches


def layer_channels(supernet: Supernet, size: int) -> dict[str, tuple[tuple[float, dict[str, float]], ...]]:
    """For every leaf layer of the exported module (the table's keys), its input and output channels as
    `(constant, {group: coefficient})`: `c = constant + sum(coefficient * channels[group])`.

    Read off the layer shapes of the largest subnet and of one subnet per group with only that group narrower: each
    module built without initializing its weights (channels do not depend on values), run on images of at most
    32 pixels (nor on the image size, past global pooling)."""
    largest = supernet.largest()
    choices = supernet.group_choices()

    def shapes(subnet: Subnet) -> dict[str, tuple[int, int]]:
        with torch.device("meta"):
            model = extract(supernet, subnet, weights=False).to_empty(device="cpu")
        with torch.no_grad():
            for t in model.state_dict().values():
                t.zero_()  # not garbage: denormal or NaN arithmetic is many times slower
        return layer_shapes(model, min(size, 32))

    base = shapes(largest)
    coef: dict[str, tuple[dict[str, float], dict[str, float]]] = {k: ({}, {}) for k in base}
    for g, top in largest.items():
        narrower = [c for c in choices[g] if c < top]
        if not narrower:
            continue
        other = shapes(Subnet.of({**dict(largest.items()), g: max(narrower)}, largest.blocks))
        for key, (c_in, c_out) in base.items():
            for side, (before, after) in enumerate(((c_in, other[key][0]), (c_out, other[key][1]))):
                if before != after:
                    coef[key][side][g] = (before - after) / (top - max(narrower))
    out = {}
    for key, (c_in, c_out) in base.items():
        ends = []
        for c, a in ((c_in, coef[key][0]), (c_out, coef[key][1])):
            ends.append((c - sum(v * largest[g] for g, v in a.items()), a))
        out[key] = tuple(ends)
    return out  # type: ignore[return-value]


class ExpectedLatency:
    """A per-layer latency table's estimate at `batch` as a function of channel counts per group: equal to
    `LatencyTable.estimate` at any subnet's channels, and differentiable in them, so that expected channels (DMCP)
    give an expected latency, as `MacsModel` gives expected MACs."""

    def __init__(self, table: LatencyTable, supernet: Supernet, batch: int) -> None:
        table.check(supernet, table.data["input_size"])
        layers, fits = layer_channels(supernet, table.data["input_size"]), table.data["layers"]["fits"]
        missing = [key for key in layers if key not in fits]
        if missing:
            raise UserError(f"{table.where}: layer {missing[0]} was never measured; rebuild the table with --layers")
        self.groups = list(supernet.groups)
        index = {g: i for i, g in enumerate(self.groups)}
        n, g = len(layers), len(self.groups)
        self.const, self.maps = torch.zeros(2, n, dtype=torch.float64), torch.zeros(2, n, g, dtype=torch.float64)
        self.coef = torch.tensor([fits[key][str(batch)] for key in layers], dtype=torch.float64)
        for i, ends in enumerate(layers.values()):
            for side, (constant, coefficients) in enumerate(ends):
                self.const[side, i] = constant
                for group, value in coefficients.items():
                    self.maps[side, i, index[group]] = value
        self.scale, self.offset = table.data["layers"]["calibration"][str(batch)]

    def __call__(self, channels: Mapping[str, torch.Tensor | float]) -> torch.Tensor:
        """Milliseconds at `channels` (a count per group, float or a tensor with gradients)."""
        ch = torch.stack([torch.as_tensor(channels[g], dtype=torch.float64) for g in self.groups])
        c_in, c_out = self.const + self.maps @ ch.to(self.maps.device)
        x = torch.stack(features(c_in, c_out), 1)
        return self.scale * (x * self.coef).sum() + self.offset
