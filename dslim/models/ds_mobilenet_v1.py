"""DS-Net's supernet `ds_mobilenet_v1` (the official "mobilenetv1_bn_uniform" space).

Depthwise-separable blocks `dw3x3 -> BN -> Swish -> SE -> pw1x1 -> BN -> Swish`, no residuals. Six channel
groups (stem and five stages); the slimmable choices are listed per group.

The gate (stage II) sits in stage 3's first block: a 1x1 conv from the block's squeezed SE vector (its second
head, beside the SE's excitation) to one logit per route. Routes are `uniform-0`..`uniform-(R-1)`: they share the
stem and stages 0-2, so everything up to the gate runs once per image (`prefix`), and `forward_routed` groups the
batch by route (`dslim.models.routing.dispatch`) and runs each group's remainder (`tail`) at its own, physically
narrower, width.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dslim.config import ModelConfig
from dslim.models import complexity
from dslim.models.base import Supernet, resolve_channels
from dslim.models.registry import register
from dslim.models.routing import ExportPlan, GraphSpec, dispatch
from dslim.nn import GlobalAvgPool, SlimConv2d, SlimLinear, SqueezeExcite
from dslim.subnet import ChannelGroup, Subnet

CHOICES = {
    "stem": (16, 24),
    "s0": (32, 88),
    "s1": (48, 168),
    "s2": (96, 264),
    "s3": tuple(range(224, 641, 32)),
    "s4": tuple(range(736, 1153, 32)),
}
DEPTHS = {"s0": 1, "s1": 2, "s2": 2, "s3": 6, "s4": 2}
STRIDES = {"s0": 1, "s1": 2, "s2": 2, "s3": 2, "s4": 2}
SE_RATIO = 0.25
GATE_STAGE = "s3"


class DSBlock(nn.Module):
    """One depthwise-separable block with SE; the SE bottleneck is sized from the input group's widest choice."""

    def __init__(self, net: Supernet, c_in: int, c_out: int, stride: int, g_in: str, g_out: str, se: int) -> None:
        super().__init__()
        self.dw = SlimConv2d(c_in, c_in, 3, stride, in_group=g_in, out_group=g_in, depthwise=True)
        self.bn1 = net.norm(c_in, g_in)
        self.se = SqueezeExcite(c_in, se, g_in)
        self.pw = SlimConv2d(c_in, c_out, 1, in_group=g_in, out_group=g_out)
        self.bn2 = net.norm(c_out, g_out)
        self.act = nn.SiLU(inplace=True)

    def head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to and including the SE squeeze: what the gate sees."""
        x = self.act(self.bn1(self.dw(x)))
        return x, self.se.squeeze(x)

    def tail(self, x: torch.Tensor, squeezed: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn2(self.pw(self.se.excite(x, squeezed))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(*self.head(x))


@register("ds_mobilenet_v1")
class DSMobileNetV1(Supernet):
    """Named subnets: `largest`, `smallest`, and `uniform-0`..`uniform-13` (stages 3 and 4 at choice r)."""

    arch = "ds_mobilenet_v1"

    def __init__(
        self,
        num_classes: int = 1000,
        bn: str = "private",
        dropout: float = 0.2,
        gate_routes: int = 4,
        channels: dict[str, int] | None = None,
    ) -> None:
        groups = [ChannelGroup(g, max(c), c) for g, c in CHOICES.items()]
        if channels is not None:
            groups = [ChannelGroup(g, int(channels[g])) for g in CHOICES]
        super().__init__(groups, bn, dict(num_classes=num_classes, bn=bn, dropout=dropout, gate_routes=gate_routes))
        ch = resolve_channels({g: grp.max for g, grp in self.groups.items()}, channels)
        self.stem = nn.Sequential(
            SlimConv2d(3, ch["stem"], 3, 2, in_group=None, out_group="stem"),
            self.norm(ch["stem"], "stem"),
            nn.SiLU(inplace=True),
        )
        stages, prev = [], "stem"
        for g, depth in DEPTHS.items():
            blocks = []
            for j in range(depth):
                g_in = prev if j == 0 else g
                se = int(max(CHOICES[g_in]) * SE_RATIO)
                blocks.append(DSBlock(self, ch[g_in], ch[g], STRIDES[g] if j == 0 else 1, g_in, g, se))
            stages.append(nn.Sequential(*blocks))
            prev = g
        self.stages = nn.Sequential(*stages)
        if gate_routes:
            reduced = self.gate_block.se.reduce.out_channels
            self.gate_block.gate = SlimConv2d(reduced, gate_routes, 1, in_group=None, out_group=None)
        self.pool = GlobalAvgPool(prev)
        self.dropout = nn.Dropout(dropout)
        self.classifier = SlimLinear(ch[prev], num_classes, in_group=prev)
        self.finish(allocate=channels is None)

    def init_weights(self) -> None:
        """Convs as DS-Net initializes them (timm's EfficientNet rule): N(0, 2 / fan_out) with fan_out =
        k * k * out / groups, so a depthwise conv is not shrunk by its channel count. PyTorch's kaiming fan-out
        (the slimmable networks' rule, used by the other supernets) gives a 1152-channel depthwise conv std 0.014
        instead of 0.47; under BatchNorm such tiny weights take huge effective steps, and the digits supernet sat at
        chance for its first epochs. The classifier keeps N(0, 0.01): the original's U(+-1/sqrt(classes)) is
        that small only for 1000 classes (with 10 it starts the loss far above chance)."""
        super().init_weights()
        for m in self.modules():
            if isinstance(m, SlimConv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> DSMobileNetV1:
        return cls(num_classes=cfg.num_classes, bn=cfg.bn, dropout=cfg.dropout, gate_routes=cfg.gate_routes)

    def uniform(self, r: int) -> Subnet:
        """Stem and stages 0-2 at their smallest width, stages 3 and 4 at choice `r`."""
        channels = {g: c[0] for g, c in CHOICES.items()}
        channels.update(s3=CHOICES["s3"][r], s4=CHOICES["s4"][r])
        return Subnet.of(channels)

    def builtin_subnets(self) -> dict[str, Subnet]:
        named = {"largest": self.largest(), "smallest": self.smallest()}
        named.update({f"uniform-{r}": self.uniform(r) for r in range(len(CHOICES["s3"]))})
        return named

    def smallest(self) -> Subnet:
        return Subnet.of({g: grp.choices[0] if grp.choices else grp.max for g, grp in self.groups.items()})

    @property
    def gate_block(self) -> DSBlock:
        return self.stages[list(DEPTHS).index(GATE_STAGE)][0]

    def static_kwargs(self) -> dict:
        return {**self.arch_kwargs, "gate_routes": 0}  # a static subnet has no use for the gate

    def routes(self) -> list[Subnet]:
        """The subnets the gate chooses among: the slimmest `gate_routes` uniform subnets (the same objects each
        time, so that setting one is the fast path of `set_subnet`)."""
        if "_routes" not in self.__dict__:
            self.__dict__["_routes"] = [self.uniform(r) for r in range(self.gate_block.gate.out_channels)]
        return self.__dict__["_routes"]

    def forward(self, x: torch.Tensor, gumbel_tau: float | None = None):  # type: ignore[no-untyped-def]
        """The active subnet, statically (the gate is not consulted); with `gumbel_tau`, gate training's forward.

        Gate training goes through `forward` so that a DDP / DeepSpeed wrapper sees it; see `forward_gumbel`.
        """
        if gumbel_tau is not None:
            return self.forward_gumbel(x, gumbel_tau)
        return self.tail(*self.prefix(x))

    def forward_gumbel(self, x: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Routing as gate training sees it: `(logits, gate logits, one-hot route)`.

        The route is a straight-through Gumbel-softmax sample. Every route's output is computed without a graph
        (the supernet is frozen in stage II) and the output is `sum_r onehot_r * out_r`, so the gate's gradient
        compares all routes exactly, each at its own width with its own BN statistics, at no backward cost.
        """
        routes = self.routes()
        with self.using():
            with torch.no_grad():
                self.set_subnet(routes[0])
                features, squeezed = self.prefix(x)
                outs = []
                for route in routes:
                    self.set_subnet(route)
                    outs.append(self.tail(features, squeezed))
            gate = self.gate_logits(squeezed)
            onehot = nn.functional.gumbel_softmax(gate.float(), tau=tau, hard=True)
            logits = torch.einsum("nr,rnc->nc", onehot, torch.stack(outs).float())
        return logits, gate, onehot

    def prefix(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stem, stages 0-2 and the gate block up to its SE squeeze: `(features, squeezed)`."""
        gate_stage = list(DEPTHS).index(GATE_STAGE)
        x = self.stages[:gate_stage](self.stem(x))
        return self.gate_block.head(x)

    def tail(self, x: torch.Tensor, squeezed: torch.Tensor) -> torch.Tensor:
        """Everything after the gate's input, at the active subnet."""
        gate_stage = list(DEPTHS).index(GATE_STAGE)
        x = self.gate_block.tail(x, squeezed)
        x = self.stages[gate_stage + 1 :](self.stages[gate_stage][1:](x))
        x = self.pool(x)
        if self.subnet == self.largest():  # DS-Net drops out before the classifier at the largest subnet only
            x = self.dropout(x)
        return self.classifier(x)

    def gate_logits(self, squeezed: torch.Tensor) -> torch.Tensor:
        return self.gate_block.gate(squeezed).flatten(1)

    def prefix_and_gate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The shared prefix and the gate's logits: the first graph of an exported dynamic model."""
        features, squeezed = self.prefix(x)
        return features, squeezed, self.gate_logits(squeezed)

    # -- the routing protocol (dslim.models.routing.Dynamic) --------------------------------------------------
    @property
    def is_dynamic(self) -> bool:
        return hasattr(self.gate_block, "gate")

    def route_subnets(self) -> list[Subnet]:
        return self.routes()

    @torch.no_grad()
    def forward_routed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The shared prefix runs once for the batch; the gate's argmax picks a route per image; each route's images
        run the rest of the network together at that route's width (`dispatch`)."""
        routes = self.routes()
        with self.using(routes[0]):  # every route shares the prefix's widths
            features, squeezed = self.prefix(x)
            route = self.gate_logits(squeezed).argmax(1)

            def run(r: int, inputs: list[torch.Tensor]) -> torch.Tensor:
                self.set_subnet(routes[r])
                return self.tail(*inputs)

            out = dispatch(route, (features, squeezed), run)
        return out, route

    def route_macs(self, input_size: int) -> torch.Tensor:
        """Exact MAdds per image of each route, the gate's own 1x1 conv included (cached per input size)."""
        cache = self.__dict__.setdefault("_route_macs", {})
        if input_size not in cache:
            gate = self.gate_block.gate.in_channels * self.gate_block.gate.out_channels
            cache[input_size] = complexity.route_macs(self, self.routes(), input_size) + gate
        return cache[input_size]

    def routed_macs(self, decisions: torch.Tensor, input_size: int) -> torch.Tensor:
        return self.route_macs(input_size).to(decisions.device)[decisions]

    def export_plan(self) -> ExportPlan:
        """The prefix with the gate as one graph (built at the slimmest route: every route shares its widths), each
        route's tail as another; the gate's argmax dispatches each image to its route's tail."""
        routes = self.routes()
        tails = [f"route-{r}" for r in range(len(routes))]
        graphs = {"prefix": GraphSpec(routes[0], "prefix_and_gate", ("image",), ("features", "squeezed", "gate"))}
        graphs.update({t: GraphSpec(r, "tail", ("features", "squeezed"), ("logits",)) for t, r in zip(tails, routes)})
        program = {
            "input": "image",
            "steps": [
                {"run": "prefix", "inputs": ["image"], "outputs": ["features", "squeezed", "gate"]},
                {"decide": "route", "from": "gate", "rule": "argmax"},
                {"dispatch": "route", "graphs": tails, "inputs": ["features", "squeezed"], "outputs": ["logits"]},
            ],
            "outputs": {"logits": "logits", "decisions": "route"},
            "routes": {
                self.name_of(r, t): {"decisions": {"route": i}, "subnet": r.to_json()}
                for i, (t, r) in enumerate(zip(tails, routes))
            },  # fmt: skip
        }
        return ExportPlan(graphs, program)

    def route_report(self, decisions: torch.Tensor, input_size: int) -> dict:
        routes, macs = self.routes(), self.route_macs(input_size)
        names = [self.name_of(r, f"route-{i}") for i, r in enumerate(routes)]
        hist = torch.bincount(decisions.cpu(), minlength=len(routes)).tolist()
        gate = self.gate_block.gate.weight.numel()
        return {
            "macs_mean": float(macs.double()[decisions.cpu()].mean()),
            "params": complexity.measure(self, input_size, routes[-1]).params + gate,
            "routes": dict(zip(names, hist)),
            "route_macs": dict(zip(names, (int(m) for m in macs.tolist()))),
        }
