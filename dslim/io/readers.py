"""The JSON files dslim reads, one reader per kind, each file checked before any of it is used.

A file dslim reads may be damaged, foreign or hostile, its own included (a disk fills, a user edits one): it is
refused in one line naming it (`UserError`) when it is larger than any file of its kind, not UTF-8, not JSON,
nested deeper than dslim's own files ever are (the parser would exhaust the stack, or a later walk would), or when
its values are not of the types its kind holds. A kind's types are a schema (`expect`):
- a type, or a tuple of types (`int` never accepts a bool; `NUMBER` is an int or a float), or `ANY`;
- a dict of field schemas, a field whose name ends in `?` may be missing (others a later dslim adds pass);
- `[schema]`, a list of them; `{str: schema}`, an object whose every value follows `schema`.
What a reader returns is only as deep as its schema: the domain's own checks (a subnet's channels, a config's
fields) come after, where the domain lives. No torch here: the onnxruntime runner reads with it too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from dslim.errors import UserError

MAX_BYTES = 64 * 2**20
"""The largest JSON file dslim reads (its largest own file, a per-layer latency table, is well under 1 MB)."""
MAX_DEPTH = 64
"""The deepest nesting dslim reads (its own files nest about 8 levels)."""
NUMBER = (int, float)
ANY = object

# -- the kinds of file ---------------------------------------------------------------------------------------------
MARKER_SCHEMA = {"format": str, "kind": str, "files": [str]}
RUN_RECORD = {"config": dict, "recipe?": str, "argv?": [str], "versions": {"dslim": str}, "history?": list}
"""A run's config.json: the resolved config (checked field by field by `dslim.stages.run`), argv and versions."""
SUBNETS = {str: {"subnet": dict, "macs?": int, "params?": int}}
"""A stage's subnets.json: named subnets with their cost and scores."""
REPORT = {"subnets": [{"subnet": str, "macs": int, "params": int, "top1": NUMBER, "top5": NUMBER}],
          "dynamic?": {"macs_mean": NUMBER, "top1": NUMBER, "top5?": NUMBER, "summary?": [str],
                       "histograms?": {str: {"label": str, "counts": {str: int}}}}}  # fmt: skip
"""A run's eval.json."""
_TIMES = {"subnet": dict, "ms": {str: NUMBER}}
LATENCY = {"format": str, "arch": str, "input_size": int, "batches": [int], "subnets": {str: _TIMES},
           "routes?": {str: _TIMES}, "layers?": {"fits": {str: {str: [NUMBER]}}, "calibration": {str: [NUMBER]}},
           "device?": dict}  # fmt: skip
"""A latency.json (`dslim.latency`)."""
CARD = {"format": str, "architecture": str, "dynamic": bool, "files": {str: str}}
"""An export card (`F.config.json`)."""
TRAINER_STATE = {"stage": str, "step": int, "epoch": int, "batch": int, "batch_size": int, "processes": int,
                 "grad_accum": int, "sets": [str]}  # fmt: skip
"""A checkpoint's trainer.json."""
METRICS_RECORD = {"kind?": str, "stage?": str, "step?": NUMBER}
"""A line of metrics.jsonl."""
SHARD_INDEX = {"keys": [str], "offsets": [int], "sizes": [int], "labels": [int]}
"""What dslim caches of a WebDataset shard: each sample's key, image location and label."""
ROUTING_PROGRAM = {"format": str, "graphs": {str: {"file": str, "inputs": [str], "outputs": [str]}}, "input_size?": int}
"""A dynamic model's routing.json (its program is checked by the runner)."""


# -- reading -------------------------------------------------------------------------------------------------------
def read_text(path: str | os.PathLike, what: str, max_bytes: int = MAX_BYTES) -> str:
    """The UTF-8 text of the file at `path` (`what` it is, for messages); refused when missing, a folder, larger
    than `max_bytes` (from its size: nothing is read) or not UTF-8."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a file")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise UserError(f"{path} holds {size:,} bytes, more than any {what} ({max_bytes:,}): not one, or damaged")
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}): not a {what}, or damaged") from None


def parse(text: str, where: str, schema: object = ANY, max_depth: int = MAX_DEPTH) -> object:
    """`text` as JSON following `schema`; `where` names it in messages (a file, a line of a file, a field)."""
    try:
        value = json.loads(text)
    except RecursionError:
        value, deep = None, True
    except ValueError as e:
        raise UserError(f"{where} is not readable JSON ({e})") from None
    else:
        deep = nesting_depth(value) > max_depth
    if deep:
        raise UserError(f"{where} nests deeper than dslim reads ({max_depth} levels): not from dslim, or damaged")
    expect(value, schema, where)
    return value


def read_json(path: str | os.PathLike, what: str, schema: object = ANY, max_bytes: int = MAX_BYTES) -> object:
    """The JSON file at `path` (`what` it is), every check of this module passed."""
    return parse(read_text(path, what, max_bytes), str(path), schema)


def read_lines(path: str | os.PathLike, what: str, schema: object = ANY, max_bytes: int = 2**30) -> Iterator[object]:
    """The values of a JSON-lines file, one per line, each checked (a damaged line is named by its number)."""
    for i, line in enumerate(read_text(path, what, max_bytes).splitlines()):
        yield parse(line, f"{path} line {i + 1}", schema)


def nesting_depth(value: object) -> int:
    """The nesting depth of a decoded JSON value, found without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


# -- types ---------------------------------------------------------------------------------------------------------
_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "an object",
          list: "a list", type(None): "null"}  # fmt: skip


def expect(value: object, schema: object, where: str, at: str = "") -> None:
    """`value` follows `schema` (see the module's docstring); a `UserError` naming the first value that does not
    (`where` the file, `at` the place inside it)."""
    if schema is ANY:
        return
    if isinstance(schema, list):
        _check(isinstance(value, list), value, "a list", where, at)
        for i, item in enumerate(value):  # type: ignore[arg-type]
            expect(item, schema[0], where, f"{at}[{i}]")
    elif isinstance(schema, dict):
        _check(isinstance(value, dict), value, "an object", where, at)
        if list(schema) == [str]:
            for key, item in value.items():  # type: ignore[union-attr]
                expect(item, schema[str], where, f"{at}[{json.dumps(key)}]")
            return
        for name, inner in schema.items():
            key = name.rstrip("?")
            if key in value:  # type: ignore[operator]
                expect(value[key], inner, where, f"{at}.{key}" if at else key)  # type: ignore[index]
            elif not name.endswith("?"):
                raise UserError(f"{where}: {at + ' ' if at else ''}lacks its field {key!r}")
    else:
        types = schema if isinstance(schema, tuple) else (schema,)
        ok = bool in types if isinstance(value, bool) else isinstance(value, types)
        _check(ok, value, " or ".join(dict.fromkeys(_NAMES.get(t, t.__name__) for t in types)), where, at)


def _check(ok: bool, value: object, wanted: str, where: str, at: str) -> None:
    if ok:
        return
    shown = _NAMES[type(value)] if isinstance(value, (dict, list)) else json.dumps(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    raise UserError(f"{where}: {at or 'its content'} should be {wanted}, not {shown}")
