"""BlockDrop's policy network and the per-image block routing of residual supernets that carry one.

The policy network reads the image (the ImageNet one reads it average-pooled to half its size) and gives one keep
probability per residual block of the base network; deployed, an image runs the blocks whose probability is at
least 0.5, and every other block costs it nothing: `forward_routed` sends each block only the images that keep it
(`dslim.models.routing.run_blocks`), so a batch saves what its images skip.

A supernet with `block_policy=True` carries the policy as its submodule `policy` (artifacts and dynamic exports
carry it along); static subnets and exports leave it out. The policy's layers have no channel group (fixed widths)
and their BatchNorm statistics are filed under the base's subnet key like every other layer's.

Cost conventions: dslim's MACs (`dslim.models.complexity`), and for the report BlockDrop's own FLOPs, as its `test.py`
counted them: `2 * C_in * C_out * k * k * H_out * W_out` per conv and `2 * in * out` per linear layer (groups, bias,
pooling and BatchNorm free), per image the policy network plus the stem, the shortcuts, the executed blocks and the
classifier. The original also counted its unused value head (`2 * features` FLOPs), which dslim does not have.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dslim.models import complexity
from dslim.models.routing import ExportPlan, GraphSpec, run_blocks
from dslim.nn import GlobalAvgPool, SlimLinear
from dslim.subnet import Subnet


class PolicyNet(nn.Module):
    """`stem -> features -> global pool -> linear -> sigmoid`: one keep probability per base block (`[N, K]`)."""

    def __init__(self, stem: nn.Module, features: nn.Module, width: int, num_blocks: int, downsample: int = 1):
        super().__init__()
        # a module rather than a functional pool, so that the complexity model costs it
        self.downsample = nn.AvgPool2d(downsample) if downsample > 1 else nn.Identity()
        self.stem, self.features = stem, features
        self.pool = GlobalAvgPool(None)
        self.head = SlimLinear(width, num_blocks, in_group=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.features(self.stem(self.downsample(x))))
        return torch.sigmoid(self.head(features).float())


@dataclass(frozen=True)
class BlockCosts:
    """Per-image cost of a routed residual network: `policy + fixed + keep @ block`; `fixed`: stem, shortcuts and
    classifier, what every image runs."""

    policy_macs: int
    fixed_macs: int
    block_macs: torch.Tensor
    """`[K]` MACs of each block's body."""
    policy_flops: int
    fixed_flops: int
    block_flops: torch.Tensor

    def macs(self, keep: torch.Tensor) -> torch.Tensor:
        return self.policy_macs + self.fixed_macs + keep.double() @ self.block_macs

    def flops(self, keep: torch.Tensor) -> torch.Tensor:
        return self.policy_flops + self.fixed_flops + keep.double() @ self.block_flops


def _split(terms: tuple[complexity.Term, ...], blocks: int) -> tuple[int, torch.Tensor, int, torch.Tensor]:
    macs, flops = torch.zeros(blocks, dtype=torch.float64), torch.zeros(blocks, dtype=torch.float64)
    fixed_macs = fixed_flops = 0
    for t in terms:
        # BlockDrop's FLOPs: twice the MACs of convs and linear layers ("dense" terms); pooling is free
        f = 2 * t.macs if t.cost.kind == "dense" else 0
        if t.block is None:
            fixed_macs, fixed_flops = fixed_macs + t.macs, fixed_flops + f
        else:
            macs[t.block] += t.macs
            flops[t.block] += f
    return fixed_macs, macs, fixed_flops, flops


class PolicyRouting:
    """Mixin of residual supernets (`stem`, `blocks` in `features`, `classify`): a forward with per-image keep masks,
    and the routing protocol (`dslim.models.routing.Dynamic`) when a `policy` is attached."""

    policy: PolicyNet | None
    blocks: list[nn.Module]

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Pooling and classifier after the last block."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None, policy: bool = False) -> torch.Tensor:
        """The active subnet statically; with `keep` (`[N, K]` bool) each image through the blocks its row keeps;
        with `policy=True` the policy's keep probabilities instead. Training calls go through `forward` so that a
        DDP / DeepSpeed wrapper sees them."""
        if policy:
            return self.policy(x)  # type: ignore[misc]
        if keep is not None:
            return self.forward_blocks(x, keep)
        return self.classify(self.features(self.stem(x)))  # type: ignore[attr-defined]

    def forward_blocks(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Each image through the blocks its row of `keep` (`[N, blocks]`, bool) keeps, grouped per block."""
        return self.classify(run_blocks(self.blocks, self.stem(x), keep))  # type: ignore[attr-defined]

    # -- the routing protocol (dslim.models.routing.Dynamic) --------------------------------------------------
    @property
    def is_dynamic(self) -> bool:
        return self.policy is not None

    def route_subnets(self) -> list[Subnet]:
        return [self.largest()]  # type: ignore[attr-defined]

    @torch.no_grad()
    def forward_routed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy's greedy decisions (keep where p >= 0.5); each block runs on the images that keep it."""
        with self.using(self.largest()):  # type: ignore[attr-defined]
            keep = self.policy(x) >= 0.5  # type: ignore[misc]
            return self.forward_blocks(x, keep), keep

    def keep_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """The policy's keep probabilities: the first graph of the export plan."""
        return self.policy(x)  # type: ignore[attr-defined, no-any-return]

    def run_stem(self, x: torch.Tensor) -> torch.Tensor:
        """The stem alone: a graph of the export plan, apart from the policy so that a runtime may run it as the
        first link of a route's chain (onnxruntime then keeps the blocks after it in its blocked layout)."""
        return self.stem(x)  # type: ignore[attr-defined, no-any-return]

    def run_block(self, index: int, keep: bool, x: torch.Tensor) -> torch.Tensor:
        """Block `index` (or, not kept, its shortcut alone): one graph of the export plan."""
        return self.blocks[index].run(x, keep)  # type: ignore[attr-defined]

    def export_plan(self) -> ExportPlan:
        """The policy as one graph, the stem as another; per block, the block as one graph and, where its shortcut
        is not the identity (a stage change), the shortcut alone as another; then the classifier. Each image takes,
        at each block, the graph of the decision it made (keep where p >= 0.5): an identity shortcut is no graph at
        all. The routes a latency table times are the two extremes: every block kept, and none."""
        full, k = self.largest(), len(self.blocks)  # type: ignore[attr-defined]
        graphs = {
            "policy": GraphSpec(full, "keep_probabilities", ("image",), ("keep_prob",)),
            "stem": GraphSpec(full, "run_stem", ("image",), ("x0",)),
        }
        steps: list[dict] = [
            {"run": "policy", "inputs": ["image"], "outputs": ["keep_prob"]},
            {"decide": "keep", "from": "keep_prob", "rule": "at_least", "value": 0.5},
            {"run": "stem", "inputs": ["image"], "outputs": ["x0"]},
        ]
        for b, block in enumerate(self.blocks):
            x, y, run = f"x{b}", f"x{b + 1}", f"block-{b}"
            skip = None if isinstance(block.shortcut, nn.Identity) else f"shortcut-{b}"
            graphs[run] = GraphSpec(full, "run_block", (x,), (y,), (b, True))
            if skip is not None:
                graphs[skip] = GraphSpec(full, "run_block", (x,), (y,), (b, False))
            steps.append({"dispatch": "keep", "column": b, "graphs": [skip, run], "inputs": [x], "outputs": [y]})
        graphs["classifier"] = GraphSpec(full, "classify", (f"x{k}",), ("logits",))
        steps.append({"run": "classifier", "inputs": [f"x{k}"], "outputs": ["logits"]})
        routes = {
            "largest": {"decisions": {"keep": [1] * k}, "subnet": full.to_json()},
            "no-blocks": {"decisions": {"keep": [0] * k}, "subnet": full.with_blocks((False,) * k).to_json()},
        }
        program = {"input": "image", "steps": steps, "outputs": {"logits": "logits", "decisions": "keep"},
                   "routes": routes}  # fmt: skip
        return ExportPlan(graphs, program)

    def block_costs(self, input_size: int) -> BlockCosts:
        """MACs and FLOPs per image of the fixed part (policy included) and of each block (cached per size)."""
        cache = self.__dict__.setdefault("_block_costs", {})
        if input_size not in cache:
            base = complexity.measure(self, input_size, self.largest()).terms  # type: ignore[arg-type, attr-defined]
            policy = complexity.measure(self.policy, input_size).terms  # type: ignore[arg-type]
            fm, bm, ff, bf = _split(base, len(self.blocks))
            pm, _, pf, _ = _split(policy, 0)
            cache[input_size] = BlockCosts(pm, fm, bm, pf, ff, bf)
        return cache[input_size]

    def routed_macs(self, decisions: torch.Tensor, input_size: int) -> torch.Tensor:
        return self.block_costs(input_size).macs(decisions.cpu()).to(decisions.device)

    def route_report(self, decisions: torch.Tensor, input_size: int) -> dict:
        """Block usage, MACs and BlockDrop's FLOPs per image (mean and spread), distinct keep patterns, and the
        histogram of blocks executed per image. Spreads as the original printed them: the block count's with
        Bessel's correction (torch), the FLOPs' without (numpy)."""
        keep = decisions.cpu().bool()
        costs = self.block_costs(input_size)
        used, macs, flops = keep.sum(1), costs.macs(keep), costs.flops(keep)
        n, k = keep.shape
        params = complexity.measure(self, input_size, self.largest()).params  # type: ignore[arg-type, attr-defined]
        params += complexity.measure(self.policy, input_size).params  # type: ignore[arg-type]
        counts = torch.bincount(used, minlength=k + 1).tolist()
        return {
            "macs_mean": float(macs.mean()),
            "params": params,
            "blocks_mean": float(used.double().mean()),
            "blocks_std": float(used.double().std()) if n > 1 else 0.0,
            "blocks_total": k,
            "flops_mean": float(flops.mean()),
            "flops_std": float(flops.std(correction=0)),
            "unique_policies": int(torch.unique(keep, dim=0).shape[0]),
            "histograms": {"blocks": {"label": "blocks executed per image",
                                      "counts": {str(b): c for b, c in enumerate(counts)}}},
        }  # fmt: skip

    def route_summary(self, row: dict) -> list[str]:
        """The lines BlockDrop's `test.py` printed."""
        return [
            f"Accuracy: {row['top1'] / 100:.3f}",
            f"Block Usage: {row['blocks_mean']:.3f} ± {row['blocks_std']:.3f}",
            f"FLOPs/img: {row['flops_mean']:.2E} ± {row['flops_std']:.2E}",
            f"Unique Policies: {row['unique_policies']}",
        ]
