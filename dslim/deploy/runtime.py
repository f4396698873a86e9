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

import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dslim.errors import UserError
from dslim.io.readers import ROUTING_PROGRAM, read_json

ROUTING = "routing.json"
ROUTING_FORMAT = "dslim.routing/1"
RunGraph = Callable[[Any, Sequence], Sequence]


@dataclass(frozen=True)
class Arrays:
    """How `execute` handles the graphs' tensors: numpy arrays (`NUMPY`) or, for PyTorch graphs, torch tensors
    (`dslim.deploy.extraction`). Decisions are always numpy arrays, made once per `decide` step, so grouping a batch
    never waits on the device more than once per decision."""

    to_numpy: Callable[[Any], np.ndarray]
    take: Callable[[Any, np.ndarray], Any]
    """Rows `idx` of a tensor (a copy)."""
    empty: Callable[[Any, int], Any]
    """An uninitialized tensor of `n` rows, each shaped and typed like the given tensor's."""
    put: Callable[[Any, np.ndarray, Any], None]
    """Set rows `idx` of the first tensor to the second."""


def _put(out: np.ndarray, idx: np.ndarray, y: np.ndarray) -> None:
    out[idx] = y


NUMPY = Arrays(np.asarray, lambda x, idx: x[idx], lambda y, n: np.empty((n, *y.shape[1:]), y.dtype), _put)


def _decide(step: Mapping, x: np.ndarray) -> np.ndarray:
    if step["rule"] == "argmax":
        return x.argmax(1).astype(np.int64)
    if step["rule"] == "threshold":
        return (x > step["value"]).astype(np.int64)
    if step["rule"] == "at_least":
        return (x >= step["value"]).astype(np.int64)
    raise UserError(f"routing program: unknown decision rule {step['rule']!r} (argmax, threshold, at_least)")


def _dispatch(keys: np.ndarray, inputs: Sequence, graphs: Sequence, run: RunGraph, arrays: Arrays) -> list:
    """`run(graphs[k], rows of inputs)` once per distinct key `k` (a `None` graph passes its rows through), the
    outputs scattered back to their rows."""

    def one(k: int, xs: Sequence) -> list:
        if not 0 <= k < len(graphs):
            raise UserError(f"routing program: decision {k} has no graph (it lists {len(graphs)})")
        return list(xs) if graphs[k] is None else list(run(graphs[k], xs))

    if len(keys) == 1 or (keys == keys[0]).all():  # one decision (always so at batch 1): no gather, no scatter
        return one(int(keys[0]), inputs)
    out: list = []
    for k in np.unique(keys):
        idx = np.flatnonzero(keys == k)
        ys = one(int(k), [arrays.take(x, idx) for x in inputs])
        if not out:
            out = [arrays.empty(y, len(keys)) for y in ys]
        for o, y in zip(out, ys):
            arrays.put(o, idx, y)
    return out


def _chains(step: Mapping, env: Mapping[str, np.ndarray]) -> tuple[np.ndarray, list[tuple[str, ...] | None]]:
    """A `chain` step's key per image and, per key, the graphs that image runs (None: it runs none)."""
    decisions, links = env[step["chain"]], step["links"]
    columns = [link["column"] for link in links]
    if None in columns:
        rows = np.stack([decisions if c is None else decisions[:, c] for c in columns], 1)
    else:
        rows = decisions[:, columns]
    if len(rows) == 1 or (rows == rows[0]).all():
        distinct, keys = rows[:1], np.zeros(len(rows), np.int64)
    else:
        distinct, keys = np.unique(rows, axis=0, return_inverse=True)
    chains = []
    for row in distinct.tolist():
        if not all(0 <= k < len(link["graphs"]) for k, link in zip(row, links)):
            raise UserError(f"routing program: a decision in {row} has no graph")
        names = tuple(g for g in (link["graphs"][k] for k, link in zip(row, links)) if g is not None)
        chains.append((*step.get("before", ()), *names, *step.get("then", ())) or None)
    return keys.reshape(-1), chains


class ChainMemo:
    """The chains of graphs single images took, per step and decision row, so that a runner called one image at a
    time names each route's graphs once (a BlockDrop route is a walk over every block's decision). Bounded: emptied
    when it holds `size` routes."""

    def __init__(self, size: int = 4096) -> None:
        self.size, self.known = size, {}  # type: ignore[var-annotated]

    def chains(self, index: int, step: Mapping, env: Mapping[str, np.ndarray]) -> tuple:
        decisions = env[step["chain"]]
        if len(decisions) != 1:
            return _chains(step, env)
        key = (index, decisions.tobytes())
        if key not in self.known:
            if len(self.known) >= self.size:
                self.known.clear()
            self.known[key] = _chains(step, env)
        return self.known[key]


def _keys(step: Mapping, env: Mapping[str, np.ndarray], decision: str) -> np.ndarray:
    keys = env[decision]
    return keys[:, step["column"]] if step.get("column") is not None else keys


def execute(
    program: Mapping,
    run: RunGraph,
    image: Any,
    force: Mapping[str, object] | None = None,
    every_graph: bool = False,
    arrays: Arrays = NUMPY,
    memo: ChainMemo | None = None,
) -> dict[str, Any]:
    """Run a routing program on a batch; returns every tensor it named (`program["outputs"]` says which matter).

    `run(graph, inputs) -> outputs` runs one graph, or, given a tuple of names, that chain of graphs one after the
    other (`chain` steps: `fuse_chains`). `force` gives decisions to take instead of deciding (a route's
    `program["routes"][name]["decisions"]`: every image takes them). `every_graph`: each dispatch runs all its
    graphs on the whole batch and continues with the first one's outputs (export uses it to get example inputs for
    every graph). `arrays`: what the graphs' tensors are (numpy arrays unless said). `memo`: the chains single
    images took before, reused.
    """
    env: dict[str, Any] = {program["input"]: image}
    n = len(image)
    for index, step in enumerate(program["steps"]):
        if "run" in step:
            env.update(zip(step["outputs"], run(step["run"], [env[i] for i in step["inputs"]])))
        elif "decide" in step:
            name = step["decide"]
            if force is not None and name in force:
                value = np.asarray(force[name], dtype=np.int64)
                env[name] = np.ascontiguousarray(np.broadcast_to(value, (n, *value.shape)))
            else:
                env[name] = _decide(step, arrays.to_numpy(env[step["from"]]))
        elif "dispatch" in step:
            inputs = [env[i] for i in step["inputs"]]
            if every_graph:
                outs = [list(inputs) if g is None else list(run(g, inputs)) for g in step["graphs"]][0]
            else:
                outs = _dispatch(_keys(step, env, step["dispatch"]), inputs, step["graphs"], run, arrays)
            env.update(zip(step["outputs"], outs))
        elif "chain" in step and not every_graph:
            keys, chains = _chains(step, env) if memo is None else memo.chains(index, step, env)
            env.update(zip(step["outputs"], _dispatch(keys, [env[i] for i in step["inputs"]], chains, run, arrays)))
        else:
            raise UserError(f"routing program: a step must `run`, `decide` or `dispatch`, not {sorted(step)}")
    return env


def fuse_chains(program: Mapping) -> dict:
    """`program` with each run of two or more consecutive `dispatch` steps on one decision, each reading one tensor
    the one before made and nothing else reads, as one `chain` step (with the `run` steps that follow it the same
    way, as its `then`, and the `run` step just before it that makes its input and nothing else, as its `before`):
    images grouped by their whole row of those decisions (a BlockDrop route: its keep bits), each group running its
    chain of graphs once. It computes the same; a runtime that pays for every graph it enters
    (onnxruntime reorders a tensor's memory layout at each graph's edges) runs each distinct chain as one graph
    instead (`OnnxDynamic`). Never written to routing.json."""
    steps = list(program["steps"])
    reads = Counter(i for s in steps for i in [*s.get("inputs", []), *(s[k] for k in ("from",) if k in s)])
    reads.update(program["outputs"].values())

    def feeds(a: Mapping, b: Mapping) -> bool:
        """`b` reads exactly the one tensor `a` makes, which nothing else reads."""
        return len(a["outputs"]) == 1 and b["inputs"] == a["outputs"] and reads[a["outputs"][0]] == 1

    fused, i = [], 0
    while i < len(steps):
        j = i + 1
        if "dispatch" in steps[i] and len(steps[i]["inputs"]) == 1:
            while j < len(steps) and steps[j].get("dispatch") == steps[i]["dispatch"] and feeds(steps[j - 1], steps[j]):
                j += 1
        if j - i < 2:
            fused.append(steps[i])
            i = j
            continue
        links = [{"column": s.get("column"), "graphs": s["graphs"]} for s in steps[i:j]]
        then, last = [], steps[j - 1]
        while j < len(steps) and "run" in steps[j] and len(steps[j]["outputs"]) == 1 and feeds(last, steps[j]):
            then.append(steps[j]["run"])
            last, j = steps[j], j + 1
        chain = {"chain": steps[i]["dispatch"], "inputs": steps[i]["inputs"], "outputs": last["outputs"],
                 "links": links, "then": then}  # fmt: skip
        if fused and "run" in fused[-1] and feeds(fused[-1], steps[i]):  # the graph making the chain's input
            chain.update(inputs=fused[-1]["inputs"], before=[fused.pop()["run"]])
        fused.append(chain)
        i = j
    return {**program, "steps": fused}


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


def _options(threads: int | None):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return options


class Graph:
    """One onnxruntime session, created once: `graph(inputs) -> outputs` (its input names looked up once)."""

    def __init__(self, model: str | bytes, threads: int | None, where: str) -> None:
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(model, _options(threads), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            detail = str(e).splitlines()[0][:200]
            raise UserError(f"{where} is not an ONNX model onnxruntime can load ({detail})") from None
        self.names = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.outputs, dict(zip(self.names, inputs)))


def _graph(path: Path, threads: int | None) -> Graph:
    if not path.is_file():
        raise UserError(f"no such ONNX file: {path}")
    return Graph(str(path), threads, str(path))


class OnnxStatic:
    """A static subnet: `model(images [N, 3, H, W] float32) -> logits`."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        self.graph = _graph(Path(path), threads)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.graph([image])[0]


class OnnxDynamic:
    """A dynamic model's folder: `model(images) -> (logits, decisions)`, routed by its `routing.json`.

    Every graph's session is created once, here. Images are grouped by decision and each group runs its graph
    once (`execute`); consecutive dispatches on one decision run as one composed graph per distinct route
    (`dslim.deploy.routes`), compiled on first use while their weights fit `cache_mb`.
    """

    def __init__(self, folder: str | os.PathLike, threads: int | None = None, cache_mb: float = 256) -> None:
        self.folder = Path(folder)
        path = self.folder / ROUTING
        self.program = check_program(read_json(path, "routing program", ROUTING_PROGRAM), str(path))
        self.graphs = {name: _graph(self.folder / g["file"], threads) for name, g in self.program["graphs"].items()}
        self.fused = fuse_chains(self.program)
        from dslim.deploy.routes import Routes

        def compile(model) -> Graph:  # type: ignore[no-untyped-def]
            return Graph(model.SerializeToString(), threads, f"a route composed from {self.folder}")

        self.routes = Routes(self._model, compile, self.graphs.__getitem__, cache_mb)
        self.memo = ChainMemo()

    def _model(self, name: str):  # type: ignore[no-untyped-def]
        import onnx

        return onnx.load(str(self.folder / self.program["graphs"][name]["file"]))

    def run_graph(self, name: str | tuple[str, ...], inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One graph, or a chain of graphs (a route: composed and compiled once)."""
        if isinstance(name, tuple):
            return self.routes.run(name, inputs)
        return self.graphs[name](inputs)

    def __call__(self, image: np.ndarray, force: Mapping[str, object] | None = None) -> tuple[np.ndarray, np.ndarray]:
        env = execute(self.fused, self.run_graph, image, force, memo=self.memo)
        out = self.program["outputs"]
        return env[out["logits"]], env[out["decisions"]]


def load(path: str | os.PathLike, threads: int | None = None) -> OnnxStatic | OnnxDynamic:
    """An exported model: a folder with `routing.json` (dynamic) or one `.onnx` file (static)."""
    p = Path(path)
    if p.is_dir():
        return OnnxDynamic(p, threads)
    return OnnxStatic(p, threads)
