"""ONNX export: every shipped architecture's subnet as one graph (checked by onnx.checker, equal in onnxruntime to
PyTorch, holding only the sliced weights), a dynamic model as a folder that routes like PyTorch, the command, cards.

The per-architecture matrix uses the TorchScript exporter (a fraction of a second per graph); the dynamo exporter
(PyTorch's default, 10-30 s per graph on 2 busy cores) runs in the slow tests on a residual net and a DS-Net folder.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_dynamic import _dsnet_with_mixed_routes, _spread_routes  # noqa: E402
from test_export_cli import make_run  # noqa: E402

from dslim.cli.export import main  # noqa: E402
from dslim.config import ModelConfig  # noqa: E402
from dslim.deploy import runtime as onnx_runtime  # noqa: E402
from dslim.deploy.onnx import export_dynamic, export_static  # noqa: E402
from dslim.errors import UserError  # noqa: E402
from dslim.models import create_supernet  # noqa: E402

ARCHS = [
    ("mobilenet_v1", dict(widths=(0.25, 0.5, 1.0)), "0.5", 32),
    ("mobilenet_v2", dict(widths=(0.35, 0.75, 1.0)), "0.75", 32),
    ("mobilenet_v2", dict(max_width=1.5, widths=(0.5, 1.5)), "0.5", 32),  # AutoSlim's / DMCP's base
    ("resnet18", dict(widths=(0.5, 1.0)), "0.5", 32),
    ("resnet50", dict(widths=(0.25, 1.0)), "0.25", 64),
    ("ds_mobilenet_v1", dict(), "uniform-5", 32),
]


def randomized(net):
    """Random weights and BatchNorm statistics, so that a wrong slice or wrong statistics shows."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in [*net.named_parameters(), *net.named_buffers()]:
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
            elif t.dim() == 1 and t.is_floating_point():  # affines and biases near their usual values
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
            elif t.is_floating_point():  # He-normal: activations stay of order one through the depth
                t.copy_(torch.randn(t.shape, generator=gen) * (2.0 / t[0].numel()) ** 0.5)
    return net.eval()


def initializer_shapes(model: onnx.ModelProto, rank: int) -> list[tuple]:
    return sorted(tuple(i.dims) for i in model.graph.initializer if len(i.dims) == rank)


@pytest.mark.parametrize("arch, kwargs, name, size", ARCHS, ids=[f"{a[0]}-{a[2]}" for a in ARCHS])
def test_static_subnet_every_architecture(tmp_path, arch, kwargs, name, size):
    bn = {} if arch == "ds_mobilenet_v1" else {"bn": "switchable"}
    net = randomized(create_supernet(arch, num_classes=10, **kwargs, **bn))
    subnet = net.resolve(name)
    path = tmp_path / f"{arch}.onnx"
    module = export_static(net, subnet, path, size, exporter="torchscript")
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    # only the sliced weights: each conv weight of the graph is one of the exported subnet's (BN folded into it)
    convs = sorted(tuple(m.weight.shape) for m in module.modules() if isinstance(m, torch.nn.Conv2d))
    assert initializer_shapes(model, 4) == convs
    assert sum(int(np.prod(i.dims)) for i in model.graph.initializer) < sum(p.numel() for p in net.parameters())
    runner = onnx_runtime.load(path)
    for batch in (1, 5):  # the batch axis is dynamic
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad(), net.using(subnet):
            expected = net(x).numpy()
        np.testing.assert_allclose(runner(x.numpy()), expected, atol=1e-4, rtol=1e-4)


def _routed_dsnet():
    net = _dsnet_with_mixed_routes(torch.float32)
    x = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    _spread_routes(net, x)
    return net, x


def _check_folder_routes_like_pytorch(net, x, folder):
    expected, route = net.forward_routed(x)
    assert sorted(route.unique().tolist()) == [0, 1, 2, 3], "the batch must span every route"
    program = json.loads((folder / "routing.json").read_text())
    for graph in program["graphs"].values():
        onnx.checker.check_model(onnx.load(folder / graph["file"]), full_check=True)
    model = onnx_runtime.load(folder)
    logits, decisions = model(x.numpy())
    np.testing.assert_array_equal(decisions, route.numpy())
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4, rtol=1e-4)
    for i in (0, 5):  # one image: one route, no grouping
        single, d = model(x[i : i + 1].numpy())
        assert d.tolist() == route[i : i + 1].tolist()
        np.testing.assert_allclose(single, expected[i : i + 1].numpy(), atol=1e-4, rtol=1e-4)
    return program


def test_dynamic_folder_routes_like_pytorch(tmp_path):
    net, x = _routed_dsnet()
    folder = tmp_path / "dsnet"
    export_dynamic(net, folder, 64, exporter="torchscript")
    program = _check_folder_routes_like_pytorch(net, x, folder)
    assert list(program["routes"]) == ["uniform-0", "uniform-1", "uniform-2", "uniform-3"]
    # each graph holds the weights of its own part and widths only: the prefix no classifier, route 0 the slimmest
    sizes = {g: sum(int(np.prod(i.dims)) for i in onnx.load(folder / f"{g}.onnx").graph.initializer)
             for g in program["graphs"]}  # fmt: skip
    assert sizes["route-0"] < sizes["route-1"] < sizes["route-2"] < sizes["route-3"]
    shapes = {g: {tuple(i.dims) for i in onnx.load(folder / f"{g}.onnx").graph.initializer} for g in program["graphs"]}
    assert (10, 736) in shapes["route-0"] and (10, 736 + 3 * 32) in shapes["route-3"]  # each its own classifier
    assert not any(len(s) == 2 and s[0] == 10 for s in shapes["prefix"])  # no classifier in the prefix


def test_routing_program_is_checked(tmp_path):
    net, _ = _routed_dsnet()
    folder = tmp_path / "dsnet"
    program = export_dynamic(net, folder, 64, exporter="torchscript")
    bad = dict(program, steps=program["steps"][::-1])  # the dispatch before what it reads
    (folder / "routing.json").write_text(json.dumps(bad))
    with pytest.raises(UserError, match="step 0"):
        onnx_runtime.load(folder)
    (folder / "routing.json").write_text("{")
    with pytest.raises(UserError, match="not readable JSON"):
        onnx_runtime.load(folder)
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match="not an ONNX model"):
        onnx_runtime.load(tmp_path / "bad.onnx")


NO_TORCH = textwrap.dedent(
    """
    import sys
    from importlib.abc import MetaPathFinder


    class NoTorch(MetaPathFinder):  # a machine without torch: importing it fails
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"{name} is not installed here")


    sys.meta_path.insert(0, NoTorch())
    import numpy as np

    from dslim.deploy import runtime

    folder, static = sys.argv[1], sys.argv[2]
    x = np.load(f"{folder}/x.npy")
    logits, decisions = runtime.load(folder)(x)
    np.testing.assert_array_equal(decisions, np.load(f"{folder}/decisions.npy"))
    np.testing.assert_allclose(logits, np.load(f"{folder}/logits.npy"), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(runtime.load(static)(x), np.load(f"{folder}/static.npy"), atol=1e-4, rtol=1e-4)
    assert "torch" not in sys.modules
    print("ran without torch")
    """
)


def test_the_runner_runs_without_torch(tmp_path):
    """`dslim.deploy.runtime` on a deployment machine: onnxruntime and numpy, torch not importable at all."""
    net, x = _routed_dsnet()
    folder, static = tmp_path / "dsnet", tmp_path / "uniform-2.onnx"
    export_dynamic(net, folder, 64, exporter="torchscript")
    export_static(net, net.resolve("uniform-2"), static, 64, exporter="torchscript")
    logits, decisions = net.forward_routed(x)
    with torch.no_grad(), net.using(net.resolve("uniform-2")):
        expected_static = net(x)
    for name, array in (("x", x), ("logits", logits), ("decisions", decisions), ("static", expected_static)):
        np.save(folder / f"{name}.npy", array.numpy())
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def run(code: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code, str(folder), str(static)], env=env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip

    done = run(NO_TORCH)
    assert done.returncode == 0 and "ran without torch" in done.stdout, done.stderr[-3000:]
    blocked = run(NO_TORCH.replace("from dslim.deploy import runtime", "import dslim.models"))
    assert blocked.returncode != 0 and "torch is not installed here" in blocked.stderr  # the blocker does block


def _dsnet_run(tmp_path):
    """A run whose gate stage finished: a DS-Net with every route's statistics and a gate spreading images."""
    model = ModelConfig(arch="ds_mobilenet_v1", num_classes=10, input_size=64, bn="private", gate_routes=4)
    run, _ = make_run(tmp_path / "run", stage="gate", model=model)
    net, x = _routed_dsnet()
    from dslim.io.artifacts import save_supernet

    net.router_trained = True
    save_supernet(net, run / "gate" / "model.safetensors", stage="gate")
    return run, net, x


def test_export_command_onnx_and_cards(tmp_path, capsys):
    run, net, x = _dsnet_run(tmp_path)
    (run / "eval.json").write_text(json.dumps({
        "subnets": [{"subnet": "uniform-2", "macs": 1, "params": 1, "top1": 81.5, "top5": 99.0}],
        "dynamic": {"macs_mean": 12.5e6, "top1": 83.0, "top5": 99.5, "routes": {}}}))  # fmt: skip
    out = tmp_path / "u2.onnx"
    main(["--run", str(run), "--subnet", "uniform-2", "--out", str(out), "--format", "onnx", "--exporter",
          "torchscript"])  # fmt: skip
    assert "u2.config.json" in capsys.readouterr().out
    card = json.loads((tmp_path / "u2.config.json").read_text())
    u2 = net.resolve("uniform-2")
    assert card["architecture"] == "ds_mobilenet_v1" and card["channels"] == dict(u2.items())
    assert card["accuracy"] == {"top1": 81.5, "top5": 99.0, "source": "eval.json"} and card["latency_ms"] is None
    assert card["num_classes"] == 10 and card["input_size"] == 64 and card["files"] == {"onnx": "u2.onnx"}
    from dslim.models.complexity import measure

    cost = measure(net, 64, u2)
    assert (card["macs"], card["params"]) == (cost.macs, cost.params)
    with torch.no_grad(), net.using(u2):
        np.testing.assert_allclose(onnx_runtime.load(out)(x.numpy()), net(x).numpy(), atol=1e-4, rtol=1e-4)
    # the same subnet as safetensors: one card listing both files
    main(["--run", str(run), "--subnet", "uniform-2", "--out", str(tmp_path / "u2.safetensors")])
    card = json.loads((tmp_path / "u2.config.json").read_text())
    assert card["files"] == {"onnx": "u2.onnx", "safetensors": "u2.safetensors"}
    # the dynamic model as a folder, its card inside
    folder = tmp_path / "dyn"
    main(["--run", str(run), "--dynamic", "--out", str(folder), "--format", "onnx", "--exporter", "torchscript"])
    card = json.loads((folder / "config.json").read_text())
    assert card["dynamic"] and list(card["routes"]) == ["uniform-0", "uniform-1", "uniform-2", "uniform-3"]
    assert card["accuracy"]["top1"] == 83.0 and card["macs_mean"] == 12.5e6
    _check_folder_routes_like_pytorch(net, x, folder)


def _refused(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_export_command_refusals(tmp_path, capsys):
    static, _ = make_run(tmp_path / "static")
    untrained, _ = make_run(tmp_path / "untrained", model=ModelConfig(arch="ds_mobilenet_v1", num_classes=10,
                                                                        input_size=32, bn="private"))  # fmt: skip
    file = tmp_path / "file"
    file.write_text("x")
    for argv, message in [
        (["--run", str(static), "--subnet", "0.5", "--out", str(tmp_path / "a.safetensors"), "--format", "onnx"],
         "should end in .onnx"),
        (["--run", str(static), "--out", str(tmp_path / "a.onnx"), "--format", "onnx"], "give one of --subnet"),
        (["--run", str(static), "--subnet", "0.5", "--dynamic", "--out", str(tmp_path / "d")], "give one of --subnet"),
        (["--run", str(static), "--dynamic", "--out", str(tmp_path / "d"), "--format", "onnx"], "does not route"),
        (["--run", str(untrained), "--dynamic", "--out", str(tmp_path / "d.safetensors")], "has not been trained"),
        (["--run", str(static), "--dynamic", "--out", str(tmp_path / "d.onnx"), "--format", "onnx"], "folder"),
        (["--run", str(static), "--dynamic", "--out", str(file), "--format", "onnx"], "is a file"),
    ]:  # fmt: skip
        _refused(capsys, argv, message)
    assert not list(tmp_path.glob("a.*")) and not (tmp_path / "d").exists()


@pytest.mark.slow
def test_dynamo_exporter(tmp_path):
    """PyTorch's default exporter: a residual net's subnet, and a DS-Net folder routing like PyTorch."""
    net = randomized(create_supernet("mobilenet_v2", num_classes=10, widths=(0.35, 1.0), bn="switchable"))
    export_static(net, net.resolve("0.35"), tmp_path / "v2.onnx", 32, exporter="dynamo")
    onnx.checker.check_model(onnx.load(tmp_path / "v2.onnx"), full_check=True)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad(), net.using(net.resolve("0.35")):
        np.testing.assert_allclose(onnx_runtime.load(tmp_path / "v2.onnx")(x.numpy()), net(x).numpy(), atol=1e-4)
    dsnet, x = _routed_dsnet()
    export_dynamic(dsnet, tmp_path / "dsnet", 64, exporter="dynamo")
    _check_folder_routes_like_pytorch(dsnet, x, tmp_path / "dsnet")


def test_export_stage_formats_and_cards(tmp_path):
    from dslim.config import replace
    from dslim.stages.pipeline import run_pipeline
    from dslim.stages.run import load_config

    run, net = make_run(tmp_path / "run")
    settings = {"stages.export.subnets": ("0.5",), "stages.export.formats": ("safetensors", "onnx", "folder"),
                "stages.export.onnx_exporter": "torchscript"}  # fmt: skip
    run_pipeline(replace(load_config(run), **settings), run, recipe="test", argv=[], stages=["export"])
    done = json.loads((run / "export" / "done.json").read_text())
    assert done == {"subnets": ["0.5"], "formats": ["safetensors", "onnx", "folder"]}
    card = json.loads((run / "export" / "0.5.config.json").read_text())
    assert card["files"] == {"safetensors": "0.5.safetensors", "onnx": "0.5.onnx"} and card["channels"]["stem"] == 16
    assert card["training"]["recipe"] == "test" and card["training"]["config"]["stages"]["export"]["subnets"] == ["0.5"]
    folder = run / "export" / "folders" / "0.5"
    assert json.loads((folder / "config.json").read_text())["channels"] == card["channels"]
    import dslim

    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = dslim.load_subnet(run / "export" / "0.5.safetensors")(x).numpy()
        torch.testing.assert_close(dslim.load_subnet(folder)(x).numpy(), expected)
    np.testing.assert_allclose(onnx_runtime.load(run / "export" / "0.5.onnx")(x.numpy()), expected, atol=1e-4)


def _blockdrop(arch, size):
    """A BlockDrop network (random weights and statistics) whose policy splits a batch at every block, each
    probability well away from 0.5 (so float32 rounding cannot flip a decision)."""
    net = randomized(create_supernet(arch, num_classes=10, block_policy=True, **({} if "cifar" in arch else
                                                                                 {"widths": (1.0,)})))  # fmt: skip
    x = torch.randn(12, 3, size, size, generator=torch.Generator().manual_seed(4))
    head = net.policy.head
    with torch.no_grad():
        logits = torch.logit(net.policy(x).double()).sort(0).values  # [images, blocks], each column sorted
        gaps = logits[4:9] - logits[3:8]  # a threshold between the middle images: some keep, some skip
        at = gaps.argmax(0)
        middle = (logits[3:8].gather(0, at[None]) + gaps.gather(0, at[None]) / 2)[0]
        head.bias.sub_(middle.float())
        p = net.policy(x)
    assert (p - 0.5).abs().min() > 1e-4
    return net, x


@pytest.mark.parametrize("arch, size", [("cifar_resnet32", 32), ("resnet18", 64)])
def test_blockdrop_folder_routes_like_pytorch(tmp_path, arch, size):
    """One graph per block (and per non-identity shortcut): each image runs the blocks its policy keeps."""
    net, x = _blockdrop(arch, size)
    folder = tmp_path / arch
    program = export_dynamic(net, folder, size, exporter="torchscript")
    with torch.no_grad():
        expected, keep = net.forward_routed(x)
    assert torch.unique(keep, dim=0).shape[0] > 4 and keep.any(0).all() and not keep.all(0).any()
    shortcuts = [b for b, block in enumerate(net.blocks) if not isinstance(block.shortcut, torch.nn.Identity)]
    blocks = [f"block-{b}" for b in range(len(net.blocks))]
    assert set(program["graphs"]) == {"policy", "stem", "classifier", *blocks, *(f"shortcut-{b}" for b in shortcuts)}
    for graph in program["graphs"].values():
        onnx.checker.check_model(onnx.load(folder / graph["file"]), full_check=True)
    model = onnx_runtime.load(folder)
    logits, decisions = model(x.numpy())
    np.testing.assert_array_equal(decisions, keep.long().numpy())
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4, rtol=1e-4)
    # each distinct policy ran as one graph composed from the blocks it keeps (the classifier too), compiled once
    (chain,) = [s for s in model.fused["steps"] if "chain" in s]
    assert len(chain["links"]) == len(net.blocks) and chain["then"] == ["classifier"]
    assert model.routes.stats["compiled"] == len(torch.unique(keep, dim=0)) == model.routes.stats["hits"]
    uncompiled = onnx_runtime.OnnxDynamic(folder, cache_mb=0)  # no room: each chain graph by graph, same outputs
    np.testing.assert_allclose(uncompiled(x.numpy())[0], logits, atol=1e-5, rtol=1e-5)
    assert uncompiled.routes.stats["compiled"] == 0 < uncompiled.routes.stats["graph_by_graph"]
    assert chain["before"] == ["stem"]  # the stem is the chain's first link, the policy apart
    small = onnx_runtime.OnnxDynamic(folder)
    small.memo.size = 3  # a memo of single images' chains that must empty itself and refill on the way
    for _ in range(2):
        for i in range(len(x)):  # one image: its own policy, no grouping; each chain named once, then reused
            single, d = small(x[i : i + 1].numpy())
            assert d.tolist() == keep[i : i + 1].long().tolist()
            np.testing.assert_allclose(single, expected[i : i + 1].numpy(), atol=1e-4, rtol=1e-4)
            assert 0 < len(small.memo.known) <= 3
    # each block's graph holds that block's weights only (BN folded into its convs)
    for b, block in enumerate(net.blocks):
        convs = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)]
        assert initializer_shapes(onnx.load(folder / f"block-{b}.onnx"), 4) == sorted(
            tuple(c.weight.shape) for c in convs
        )
    # a route forced for the whole batch (what a latency table times): every block, or only the shortcuts
    every, _ = model(x.numpy(), force=program["routes"]["largest"]["decisions"])
    with torch.no_grad(), net.using(net.largest()):
        np.testing.assert_allclose(every, net(x).numpy(), atol=1e-4, rtol=1e-4)
    none, _ = model(x.numpy(), force=program["routes"]["no-blocks"]["decisions"])
    with torch.no_grad(), net.using(net.largest().with_blocks((False,) * len(net.blocks))):
        np.testing.assert_allclose(none, net(x).numpy(), atol=1e-4, rtol=1e-4)


def test_export_command_writes_a_blockdrop_folder(tmp_path, capsys):
    """`dslim.export --dynamic --format onnx` on a BlockDrop run: graphs, routing.json and card; routes like PyTorch."""
    model = ModelConfig(arch="cifar_resnet32", num_classes=10, input_size=32, bn="private", block_policy=True)
    run, _ = make_run(tmp_path / "run", stage="finetune", model=model)
    net, x = _blockdrop("cifar_resnet32", 32)
    from dslim.io.artifacts import save_supernet

    net.router_trained = True
    save_supernet(net, run / "finetune" / "model.safetensors", stage="finetune")
    folder = tmp_path / "bd"
    main(["--run", str(run), "--dynamic", "--out", str(folder), "--format", "onnx", "--exporter", "torchscript"])
    assert "cifar_resnet32 dynamic model from finetune" in capsys.readouterr().out
    card = json.loads((folder / "config.json").read_text())
    assert (
        card["dynamic"]
        and card["architecture"] == "cifar_resnet32"
        and list(card["routes"]) == ["largest", "no-blocks"]
    )
    from dslim.models.complexity import measure

    shortcuts = net.largest().with_blocks((False,) * 15)
    assert card["routes"]["no-blocks"]["macs"] == measure(net, 32, shortcuts).macs < card["routes"]["largest"]["macs"]
    program = json.loads((folder / "routing.json").read_text())
    assert [s.get("column") for s in program["steps"] if "dispatch" in s] == list(range(15))
    logits, decisions = onnx_runtime.load(folder)(x.numpy())
    with torch.no_grad():
        expected, keep = net.forward_routed(x)
    np.testing.assert_array_equal(decisions, keep.long().numpy())
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("inline", [True, False])
def test_an_exported_graph_holds_or_names_its_weights_under_its_own_name(tmp_path, monkeypatch, inline):
    """The dynamo exporter writes a model's weights to a file named after the graph's file and records that name in
    the graph. Written as a temporary sibling, the graph named a temporary file, which the sweep of an interrupted
    write removes: the graph kept must run after a sweep of its folder, and from a copy of what its name says."""
    import dslim.deploy.onnx as onnx_export
    from dslim.io.outputs import sweep

    if not inline:  # a model over the inline limit: its weights in `<name>.onnx.data`, beside it
        monkeypatch.setattr(onnx_export, "INLINE_BYTES", 0)
    net = randomized(create_supernet("mobilenet_v1", num_classes=10, widths=(0.25, 0.5)))
    out = tmp_path / "out"
    export_static(net, net.resolve("0.25"), out / "m.onnx", 32, exporter="dynamo")
    assert sorted(p.name for p in out.iterdir()) == (["m.onnx"] if inline else ["m.onnx", "m.onnx.data"])
    sweep([out])
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in out.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), net.using(net.resolve("0.25")):
        expected = net(x).numpy()
    for folder in (out, copy):
        np.testing.assert_allclose(onnx_runtime.load(folder / "m.onnx")(x.numpy()), expected, atol=1e-4)
