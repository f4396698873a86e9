"""Width-multiplier supernets (S-Net, US-Net, AutoSlim and DMCP bases): a subnet per width multiplier."""

from __future__ import annotations

from dslim.errors import UserError
from dslim.models.base import Supernet
from dslim.subnet import ChannelGroup, Subnet, make_divisible


def width_name(width: float) -> str:
    """A width as its subnet name: the float as Python writes it ("0.75", "1.0")."""
    return repr(float(width))


class WidthSupernet(Supernet):
    """A supernet whose uniform subnets are width multipliers.

    `widths` are the named (S-Net: the only trainable) widths; `width_range`, when given, makes the network
    universally slimmable: any width inside it is a valid subnet, named by the width itself.
    """

    def __init__(
        self,
        base: dict[str, int],
        *,
        num_classes: int,
        max_width: float,
        widths: tuple[float, ...],
        width_range: tuple[float, float] | None,
        bn: str,
        dropout: float,
        channels: dict[str, int] | None,
    ) -> None:
        arch_kwargs = dict(num_classes=num_classes, max_width=max_width, widths=widths, width_range=width_range,
                           bn=bn, dropout=dropout)  # fmt: skip
        self.base, self.max_width = base, max_width
        self.widths = tuple(float(w) for w in widths)
        self.width_range = None if width_range is None else (float(width_range[0]), float(width_range[1]))
        built = channels if channels is not None else self.width_channels(max_width)
        super().__init__([ChannelGroup(g, built[g]) for g in base], bn, arch_kwargs)
        if channels is None:
            if self.width_range is not None:
                lo, hi = self.width_range
                if not 0 < lo <= hi <= max_width + 1e-9:
                    raise UserError(
                        f"--model.width-range {lo} {hi}: must satisfy 0 < min <= max <= --model.max-width {max_width}"
                    )
            for w in self.widths:
                if w > max_width + 1e-9:
                    raise UserError(f"--model.widths: width {w} is above {self.arch}'s max width {max_width}")
                try:
                    self.check_width(w)
                except UserError as e:
                    raise UserError(f"--model.widths: {e}") from None

    def width_channels(self, width: float) -> dict[str, int]:
        """Channels of every group at a width multiplier (the architecture's own rounding rule)."""
        raise NotImplementedError

    def round_channels(self, channels: float) -> int:
        return make_divisible(channels)

    def check_width(self, width: float) -> None:
        if self.width_range is None:
            if width not in self.widths:
                raise UserError(f"width {width} is not one of {self.arch}'s widths {list(self.widths)}")
            return  # named widths were checked against max_width when the network was built
        lo, hi = self.width_range
        if not lo - 1e-9 <= width <= hi + 1e-9 or width > self.max_width + 1e-9:
            raise UserError(f"width {width} is outside {self.arch}'s range [{lo}, {min(hi, self.max_width)}]")

    def uniform(self, width: float) -> Subnet:
        self.check_width(width)
        return Subnet.of(self.width_channels(width))

    def builtin_subnets(self) -> dict[str, Subnet]:
        return {width_name(w): Subnet.of(self.width_channels(w)) for w in self.widths}

    def subnet_from_name(self, name: str) -> Subnet | None:
        try:
            width = float(name)
        except ValueError:
            return None
        return self.uniform(width)

    def allowed_names(self) -> str:
        if self.width_range is not None:
            return f"any width in [{self.width_range[0]}, {self.width_range[1]}]"
        return ", ".join(self.named_subnets())

    def smallest(self) -> Subnet:
        if self.width_range is None and not self.widths:  # names given by `name_subnets` only (a retrained S-Net)
            return min(self.named_subnets().values(), key=lambda s: sum(s.values()), default=self.largest())
        return self.uniform(self.width_range[0] if self.width_range else min(self.widths))

    def unnamed_kwargs(self, bn: str) -> dict:
        return {**self.arch_kwargs, "bn": bn, "widths": (), "width_range": None}

    @classmethod
    def from_config(cls, cfg):  # type: ignore[no-untyped-def]
        check_named(cfg)
        return cls(
            num_classes=cfg.num_classes,
            max_width=cfg.max_width,
            widths=cfg.widths,
            width_range=cfg.width_range,
            bn=cfg.bn,
            dropout=cfg.dropout,
            **cls.own_options(cfg),
        )

    @classmethod
    def own_options(cls, cfg) -> dict:  # type: ignore[no-untyped-def]
        """The model settings only this architecture takes (`--model.block-policy`, `--model.prune-head`)."""
        return {}


def check_named(cfg) -> None:  # type: ignore[no-untyped-def]
    """A configured width network names at least one width (only a retrained S-Net of given subnets names none)."""
    if cfg.width_range is None and not cfg.widths:
        raise UserError("--model.widths is empty: name at least one width (or set --model.width-range)")
