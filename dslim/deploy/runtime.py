"""A small reference runner for exported ONNX models on onnxruntime (numpy only, no torch needed at deployment).

It imports nothing of dslim but `dslim.errors`, and `dslim/__init__.py` loads its public names lazily, so
`from dslim.deploy import runtime` works on a machine with onnxruntime and numpy alone (tests/test_onnx.py checks it
with torch made unimportable).

`load(path)` opens a static subnet (`F.onnx`: `model(images) -> logits`) or a dynamic model's folder
(`model(images) -> (logits, decisions)`). The folder holds one graph per part of the model and `routing.json`, the
routing program of `dslim.models.routing`: `execute` interprets it, running each `dispatch` step's graphs on the
images that chose them, grouped as PyTorch's `dispatch` groups a batch, so it routes exactly like `forward_routed`.
`execute` is also what export and latency tables use (with PyTorch graphs), so there is one interpreter.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from dslim.errors import UserError

ROUTING = "routing.json"
ROUTING_FORMAT = "dslim.routing/1"
RunGraph = Callable[[str, Sequence[np.ndarray]], Sequence[np.ndarray]]


def _decide(step: Mapping, x: np.ndarray) -> np.ndarray:
    if step["rule"] == "argmax":
        return x.argmax(1).astype(np.int64)
    if step["rule"] == "threshold":
        return (x > step["value"]).astype(np.int64)
    if step["rule"] == "at_least":
        return (x >= step["value"]).astype(np.int64)
    raise UserError(f"routing program: unknown decision rule {step['rule']!r} (argmax, threshold, at_least)")


def _dispatch(
    keys: np.ndarray, inputs: Sequence[np.ndarray], graphs: Sequence[str | None], run: RunGraph
) -> list[np.ndarray]:
    def one(k: int, xs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if not 0 <= k < len(graphs):
            raise UserError(f"routing program: decision {k} has no graph (it lists {len(graphs)})")
        return list(xs) if graphs[k] is None else list(run(graphs[k], xs))  # type: ignore[arg-type]

    used = np.unique(keys)
    if len(used) == 1:  # every image decided the same (always so at batch 1): no gather, no scatter
        return one(int(used[0]), inputs)
    out: list[np.ndarray] = []
    for k in used:
        idx = np.nonzero(keys == k)[0]
        ys = one(int(k), [x[idx] for x in inputs])
        if not out:
            out = [np.empty((len(keys), *y.shape[1:]), y.dtype) for y in ys]
        for o, y in zip(out, ys):
            o[idx] = y
    return out


def execute(
    program: Mapping,
    run: RunGraph,
    image: np.ndarray,
    force: Mapping[str, object] | None = None,
    every_graph: bool = False,
) -> dict[str, np.ndarray]:
    """Run a routing program on a batch; returns every tensor it named (`program["outputs"]` says which matter).

    `run(graph, inputs) -> outputs` runs one graph. `force` gives decisions to take instead of deciding (a route's
    `program["routes"][name]["decisions"]`: every image takes them). `every_graph`: each dispatch runs all its
    graphs on the whole batch and continues with the first one's outputs (export uses it to get example inputs for
    every graph).
    """
    env: dict[str, np.ndarray] = {program["input"]: image}
    n = len(image)
    for step in program["steps"]:
        if "run" in step:
            env.update(zip(step["outputs"], run(step["run"], [env[i] for i in step["inputs"]])))
        elif "decide" in step:
            name = step["decide"]
            if force is not None and name in force:
                value = np.asarray(force[name], dtype=np.int64)
                env[name] = np.ascontiguousarray(np.broadcast_to(value, (n, *value.shape)))
            else:
                env[name] = _decide(step, env[step["from"]])
        elif "dispatch" in step:
            keys = env[step["dispatch"]]
            keys = keys[:, step["column"]] if step.get("column") is not None else keys
            inputs = [env[i] for i in step["inputs"]]
            if every_graph:
                outs = [list(inputs) if g is None else list(run(g, inputs)) for g in step["graphs"]][0]
            else:
                outs = _dispatch(keys, inputs, step["graphs"], run)
            env.update(zip(step["outputs"], outs))
        else:
            raise UserError(f"routing program: a step must `run`, `decide` or `dispatch`, not {sorted(step)}")
    return env


def check_program(program: object, where: str) -> dict:
    """`program` if it is a routing program whose every step reads tensors an earlier step made; else a one-line
    `UserError` naming `where`."""
    if not isinstance(program, dict) or not isinstance(program.get("steps"), list) or "input" not in program:
        raise UserError(f"{where} is not a dslim routing program (no `input` and `steps`)")
    graphs = program.get("graphs")
    if not isinstance(graphs, dict):
        raise UserError(f"{where} lists no `graphs`")
    known = {program["input"]}
    for i, step in enumerate(program["steps"]):
        if not isinstance(step, dict) or sum(kind in step for kind in ("run", "decide", "dispatch")) != 1:
            raise UserError(f"{where}: step {i} must either `run`, `decide` or `dispatch`: {step}")
        reads = [*step.get("inputs", []), *(step[k] for k in ("from", "dispatch") if k in step)]
        runs = [step["run"]] if "run" in step else [g for g in step.get("graphs", []) if g is not None]
        if any(r not in known for r in reads) or any(g not in graphs for g in runs):
            raise UserError(f"{where}: step {i} reads a tensor no earlier step made or runs an unlisted graph: {step}")
        known |= {*step.get("outputs", []), *([step["decide"]] if "decide" in step else [])}
    outputs = program.get("outputs")
    if not isinstance(outputs, dict) or not set(outputs.values()) <= known:
        raise UserError(f"{where}: `outputs` must name tensors the steps make")
    return program


def _session(path: Path, threads: int | None):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    if not path.is_file():
        raise UserError(f"no such ONNX file: {path}")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unreadable models
        raise UserError(f"{path} is not an ONNX model onnxruntime can load ({str(e).splitlines()[0][:200]})") from None


def _run(session, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, inputs)))


class OnnxStatic:
    """A static subnet: `model(images [N, 3, H, W] float32) -> logits`."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        self.session = _session(Path(path), threads)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return _run(self.session, [image])[0]


class OnnxDynamic:
    """A dynamic model's folder: `model(images) -> (logits, decisions)`, routed by its `routing.json`."""

    def __init__(self, folder: str | os.PathLike, threads: int | None = None) -> None:
        folder = Path(folder)
        path = folder / ROUTING
        try:
            program = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{path} is not readable JSON ({e}): not an exported dynamic model") from None
        self.program = check_program(program, str(path))
        self.sessions = {name: _session(folder / g["file"], threads) for name, g in self.program["graphs"].items()}

    def run_graph(self, name: str, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return _run(self.sessions[name], inputs)

    def __call__(self, image: np.ndarray, force: Mapping[str, object] | None = None) -> tuple[np.ndarray, np.ndarray]:
        env = execute(self.program, self.run_graph, image, force)
        out = self.program["outputs"]
        return env[out["logits"]], env[out["decisions"]]


def load(path: str | os.PathLike, threads: int | None = None) -> OnnxStatic | OnnxDynamic:
    """An exported model: a folder with `routing.json` (dynamic) or one `.onnx` file (static)."""
    p = Path(path)
    if p.is_dir():
        return OnnxDynamic(p, threads)
    return OnnxStatic(p, threads)
