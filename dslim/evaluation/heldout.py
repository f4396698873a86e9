"""Held-out scoring: how a candidate subnet does on the training images left out of training (`--data.holdout`).

A search scores thousands of candidates, so the held-out images (and calibration batches) are held in memory on the
device, every process scores every P-th candidate and the sums are reduced: P processes score about P times faster,
and every process gets every score. Statistics computed for a candidate are thrown away after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from dslim.config import Config
from dslim.evaluation.calibration import batch_statistics, recalibrate, scratch_statistics
from dslim.methods.autoslim import Score
from dslim.models.base import Supernet
from dslim.subnet import Subnet


class HeldOutScorer:
    """Scores subnets on the held-out split; each process scores every P-th one, the sums are reduced.

    `batch_size`: held-out images per forward; `bn`: each held-out batch's own statistics (`batch`), or statistics
    from `calibrate_batches` training batches in a throwaway scope (`recalibrate`).
    """

    def __init__(self, net: Supernet, config: Config, accelerator: Accelerator, batch_size: int,
                 bn: Literal["batch", "recalibrate"], calibrate_batches: int) -> None:  # fmt: skip
        from dslim.data import build_loader

        self.net, self.bn, self.acc = net, bn, accelerator
        size, device = config.model.input_size, net.device
        # every process reads the whole split (no shard): each scores whole candidates
        data = dataclasses.replace(config.data, eval_batch_size=batch_size)
        held = list(build_loader(data, "holdout", size, seed=config.seed))
        images = torch.cat([x for x, _ in held]).to(device)
        labels = torch.cat([y.view(-1) for _, y in held]).to(device).long()
        parts = math.ceil(len(labels) / batch_size)
        self.batches = list(zip(images.tensor_split(parts), labels.tensor_split(parts)))
        self.calibration = []
        if bn == "recalibrate":
            train = build_loader(config.data, "train", size, seed=config.seed)
            self.calibration = [(x.to(device), y) for x, y in itertools.islice(train, calibrate_batches)]

    def __call__(self, subnets: Sequence[Subnet]) -> list[Score]:
        sums = torch.zeros(len(subnets), 3, dtype=torch.float64, device=self.net.device)
        for i in range(self.acc.process_index, len(subnets), self.acc.num_processes):
            sums[i] = self.sums(subnets[i])
        if self.acc.num_processes > 1:
            sums = self.acc.reduce(sums, reduction="sum")
        return [Score(100.0 * float(c) / float(n), float(loss) / float(n)) for c, loss, n in sums.cpu()]

    @torch.no_grad()
    def sums(self, subnet: Subnet) -> torch.Tensor:
        """(correct, summed cross-entropy, images) of `subnet` on the held-out images."""
        net, out = self.net, torch.zeros(3, dtype=torch.float64, device=self.net.device)
        with scratch_statistics(net), self.acc.autocast():
            with contextlib.ExitStack() as scope:
                if self.bn == "recalibrate":
                    recalibrate(net, {"candidate": subnet}, self.calibration, len(self.calibration), show=False)
                    scope.enter_context(net.using(subnet, train=False))
                else:
                    scope.enter_context(net.using(subnet))
                    scope.enter_context(batch_statistics(net))
                for images, labels in self.batches:
                    logits = net(images).float()
                    out[0] += (logits.argmax(1) == labels).sum()
                    out[1] += F.cross_entropy(logits, labels, reduction="sum").double()
                    out[2] += labels.numel()
        return out
