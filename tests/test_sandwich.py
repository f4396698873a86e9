"""One sandwich step through the real trainer equals a step computed by hand with plain torch."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate.state import AcceleratorState

from dslim.config import OptimConfig, ScheduleConfig
from dslim.methods.sandwich import Sandwich, SandwichConfig, step_subnets
from dslim.models import create_supernet
from dslim.training import MetricsLog, Trainer, make_accelerator
from dslim.training.method import SUBNET_STREAM

LR, MOMENTUM, WD, SMOOTHING, BATCH, SIZE = 0.2, 0.9, 1e-3, 0.1, 8, 16


def supernet(bn: str):
    torch.manual_seed(0)
    width_range = (0.25, 1.0) if bn == "calibrated" else None
    return create_supernet(
        "mobilenet_v1", num_classes=10, widths=(0.25, 0.5, 0.75, 1.0), width_range=width_range, bn=bn
    )


def one_trainer_step(net, cfg, batch, tmp_path):
    AcceleratorState._reset_state(True)
    acc = make_accelerator("no")
    trainer = Trainer(acc, net, Sandwich(cfg), cfg, stage="supernet", state_dir=tmp_path / "state",
                      metrics=MetricsLog(tmp_path / "metrics.jsonl", acc), batch_size=BATCH, seed=3)  # fmt: skip
    trainer.fit(lambda epoch: [batch])
    return trainer


def soft_ce(logits, target):
    return -(target * logits.log_softmax(1)).sum(1).mean()


def reference_step(net, subnets, distill, ensemble, batch):
    """The step written out: losses, targets, summed gradients, then SGD Nesterov with decay on conv/FC weights."""
    x, y = batch
    teacher_net = copy.deepcopy(net).eval()  # the EMA before its first update is the initial model
    net.train()
    if distill == "ieb":
        with torch.no_grad():
            probs = []
            for s in subnets[:-1]:
                teacher_net.set_subnet(s)
                probs.append(teacher_net(x).softmax(1))
        targets = [probs[0]] * (len(subnets) - 2) + [torch.stack(probs).mean(0) if ensemble else probs[0]]
    inplace = None
    for i, s in enumerate(subnets):
        net.set_subnet(s)
        logits = net(x)
        if i == 0 or distill == "none":
            loss = F.cross_entropy(logits, y, label_smoothing=SMOOTHING)
            inplace = logits.detach().softmax(1) if i == 0 else inplace
        else:
            loss = soft_ce(logits, inplace if distill == "inplace" else targets[i - 1])
        loss.backward()
    with torch.no_grad():
        for p in net.parameters():
            if p.grad is None:
                continue
            g = p.grad + (WD * p if p.ndim > 1 else 0)
            p -= LR * (g + MOMENTUM * g)  # first Nesterov step: buffer = g, update = g + momentum * buffer


@pytest.mark.parametrize(
    ("bn", "distill", "ensemble"),
    [("calibrated", "inplace", False), ("private", "ieb", True), ("switchable", "none", False)],
)
def test_one_step_matches_hand_computed_reference(tmp_path, bn, distill, ensemble):
    cfg = SandwichConfig(
        epochs=1,
        rule="all_widths" if bn == "switchable" else "sandwich",
        num_random=2,
        random_subnets=("0.5", "0.75") if bn == "private" else (),
        distill=distill,
        ensemble_ib=ensemble,
        ema_decay=0.9 if distill == "ieb" else 0.0,
        label_smoothing=SMOOTHING,
        optim=OptimConfig(lr=LR, lr_batch=BATCH, momentum=MOMENTUM, weight_decay=WD),
        schedule=ScheduleConfig(kind="constant"),
    )
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(BATCH, 3, SIZE, SIZE, generator=g), torch.randint(0, 10, (BATCH,), generator=g))
    net = supernet(bn)
    ref = copy.deepcopy(net)

    # The subnets, drawn as documented: from (seed, step) only.
    rng = np.random.default_rng((3, 0, SUBNET_STREAM, 0))
    if bn == "calibrated":
        subnets = [ref.largest(), ref.uniform(rng.uniform(0.25, 1.0)), ref.uniform(rng.uniform(0.25, 1.0)),
                   ref.smallest()]  # fmt: skip
    elif bn == "private":
        names = ("0.5", "0.75")
        subnets = [ref.largest(), *(ref.resolve(names[rng.integers(2)]) for _ in range(2)), ref.smallest()]
    else:
        subnets = [ref.resolve(w) for w in ("1.0", "0.75", "0.5", "0.25")]
    assert [s for _, s in step_subnets(ref, cfg, np.random.default_rng((3, 0, SUBNET_STREAM, 0)))] == subnets

    trainer = one_trainer_step(net, cfg, batch, tmp_path)
    reference_step(ref, subnets, distill, ensemble, batch)

    trained, init = dict(trainer.supernet.named_parameters()), dict(supernet(bn).named_parameters())
    changed = 0
    for name, p in ref.named_parameters():
        torch.testing.assert_close(trained[name], p, atol=1e-6, rtol=1e-5, msg=name)
        changed += not torch.equal(p, init[name])
    assert changed > 0.9 * len(trained)
    if trainer.ema is not None:  # one EMA update from the initial weights
        for name, e in trainer.ema.named_parameters():
            torch.testing.assert_close(e, 0.9 * init[name] + 0.1 * trained[name], atol=1e-6, rtol=1e-5)


def test_subnet_draws_depend_only_on_seed_and_step():
    net = supernet("calibrated")
    cfg = SandwichConfig(num_random=2)

    def draws(seed, step):
        return step_subnets(net, cfg, np.random.default_rng((seed, step, SUBNET_STREAM, 0)))

    assert draws(0, 5) == draws(0, 5)
    assert draws(0, 5) != draws(0, 6) and draws(0, 5) != draws(1, 5)
    first, *middle, last = draws(0, 5)
    assert first[1] == net.largest() and last[1] == net.smallest() and len(middle) == 2
