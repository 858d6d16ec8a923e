"""Fuzzed train replies for ``ResilientAveraging.aggregate_train`` and the checks every round must pass.

Shared by ``test_fuzz_replies.py`` (hypothesis drives it) and ``benchmarks/fuzz_rounds.py`` (a seeded stream
of 10,000+ rounds). A round is a *plan*: a list of ``(kind, node, seed)``; ``node`` indexes the round's
nodes (``>= len(nodes)``: a node that was not sampled). :func:`run_round` builds the messages, calls the
strategy, and :func:`check_round` verifies what must hold whatever the replies:

* no exception escapes ``aggregate_train``;
* the returned model is ``None`` or has the global model's keys, shapes and dtypes, finite floats and the
  non-float arrays unchanged;
* every reply is either kept or excluded with a reason: ``valid + excluded == received``, the
  per-reason counts add up, the strategy's running totals grow by as much, ``missing`` counts the sampled
  nodes that sent nothing; without an adversary the number kept is exactly the number of first replies of
  sampled nodes whose content is valid;
* too few valid replies for the rule: ``None`` and the round says why; enough valid replies of ordinary
  magnitude: the round aggregates (with a simulated adversary too);
* the value (no adversary, a :class:`Reference` given): the new model is ``θ - γ (F(valid replies) + λ θ)``
  with ``F`` a rule built independently by ``resam_flower.aggregators.build``, applied to the vectors of the
  kept replies (float parameters in the global model's key order, replies in node-id order).
"""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from resam_flower.aggregators import Aggregator
from resam_flower.protocol import REPLY_MOMENTUM
from tests.flower_helpers import FakeGrid, instruction

SHAPES = {"w": (3, 2), "b": (2,)}
GLOBAL = ArrayRecord(
    {
        "w": Array(np.arange(6, dtype=np.float32).reshape(3, 2) / 10),
        "b": Array(np.array([0.5, -0.5], np.float32)),
        "n": Array(np.array(7, np.int64)),  # a non-float buffer: carried over, never aggregated
    }
)

#: Kinds whose content passes screening (finite float32 arrays of the right keys, shapes and dtypes).
VALID_KINDS = ("good", "zero", "huge", "tiny", "metric-spoof", "extra-config")
INVALID_KINDS = (
    "nan", "inf", "shape", "scalar", "dtype64", "dtype16", "int-buffer", "missing-key", "extra-key",
    "key-order", "no-arrays", "empty", "two-records", "error", "garbage-bytes", "truncated", "npz",
    "lying-header", "lying-metadata", "big-endian", "stype", "undeclared",
)  # fmt: skip
KINDS = VALID_KINDS + INVALID_KINDS
#: Valid kinds with values large enough that a rule may legitimately give up (squared norms overflow).
EXTREME_KINDS = ("huge",)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _lying_npy(shape: tuple) -> bytes:
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
    header = text + " " * (117 - len(text)) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\x00" * 16


def _raw(arr: np.ndarray, *, dtype: str | None = None, shape: tuple | None = None, data: bytes | None = None):
    return Array(
        dtype=dtype or str(arr.dtype),
        shape=tuple(shape if shape is not None else arr.shape),
        stype="numpy.ndarray",
        data=data if data is not None else _npy(arr),
    )


def _values(kind: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    scale = {"huge": 10.0 ** rng.uniform(18, 38), "tiny": 1e-42, "zero": 0.0}.get(kind, rng.uniform(0.1, 10))
    out = {k: (rng.standard_normal(s) * scale).astype(np.float32) for k, s in SHAPES.items()}
    if kind == "huge":
        out["w"] = np.clip(out["w"], -3e38, 3e38).astype(np.float32)
    return out


def make_reply(kind: str, to: Message, rng: np.random.Generator) -> Message:
    """A reply of the given kind to the instruction ``to``."""
    if kind == "error":
        return Message(Error(code=int(rng.integers(0, 100)), reason="worker crashed"), reply_to=to)
    v = _values(kind, rng)
    arrays: dict[str, Array] = {k: Array(a) for k, a in v.items()}
    arrays["n"] = Array(np.array(7, np.int64))
    metrics: dict = {"num-examples": int(rng.integers(-(2**63), 2**63))}
    if kind != "undeclared":  # gradient mode: a reply declares that its arrays are a momentum
        metrics[REPLY_MOMENTUM] = 1
    if kind == "nan" or kind == "inf":
        flat = v["w"].reshape(-1).copy()
        flat[rng.integers(0, flat.size)] = np.nan if kind == "nan" else rng.choice([np.inf, -np.inf])
        arrays["w"] = Array(flat.reshape(SHAPES["w"]))
    elif kind == "shape":
        arrays["w"] = Array(np.zeros((2, 3), np.float32))
    elif kind == "scalar":
        arrays["b"] = Array(np.array(1.0, np.float32))
    elif kind in ("dtype64", "dtype16"):
        arrays["b"] = Array(v["b"].astype(np.float64 if kind == "dtype64" else np.float16))
    elif kind == "int-buffer":
        arrays["n"] = Array(np.array([7, 7], np.int64))
    elif kind == "missing-key":
        del arrays["b"]
    elif kind == "extra-key":
        arrays["evil"] = Array(np.ones(4, np.float32))
    elif kind == "key-order":
        arrays = {k: arrays[k] for k in ("b", "w", "n")}
    elif kind == "garbage-bytes":
        arrays["w"] = _raw(v["w"], data=rng.bytes(int(rng.integers(0, 200))))
    elif kind == "truncated":
        data = _npy(v["w"])
        arrays["w"] = _raw(v["w"], data=data[: int(rng.integers(0, len(data)))])
    elif kind == "npz":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("w.npy", _npy(v["w"]))
        arrays["w"] = _raw(v["w"], data=buf.getvalue())
    elif kind == "lying-header":  # npy header claims a large array (400 MB); the data is 16 bytes
        arrays["w"] = _raw(v["w"], data=_lying_npy((10**8,)))
    elif kind == "lying-metadata":  # Array metadata says float32 (3, 2); the bytes hold float64 (6,)
        arrays["w"] = _raw(
            v["w"], dtype="float32", shape=(3, 2), data=_npy(v["w"].astype(np.float64).ravel())
        )
    elif kind == "big-endian":
        arrays["w"] = Array(v["w"].astype(">f4"))
    elif kind == "stype":
        arrays["w"] = Array(dtype="float32", shape=(3, 2), stype="torch.Tensor", data=_npy(v["w"]))
    elif kind == "metric-spoof":  # a Byzantine client reports the server's own metric names
        metrics.update({"valid": 1e9, "excluded": -1.0, "skipped": 0.0, "missing": -5, "lr": float("nan")})
        metrics["train-loss"] = [1.0, float("inf")]
    content = RecordDict()
    if kind not in ("no-arrays", "empty"):
        content["arrays"] = ArrayRecord(arrays)
    if kind == "two-records":
        content["more"] = ArrayRecord(arrays)
    if kind == "extra-config":
        content["config"] = ConfigRecord({"note": "hello", "server-round": -1})
    if kind != "empty":
        content["metrics"] = MetricRecord(metrics)
    return Message(content=content, reply_to=to)


@dataclass
class Outcome:
    """What one fuzzed round produced and what it should have."""

    arrays: ArrayRecord | None
    metrics: MetricRecord | None
    expected_valid: int
    expected_missing: int
    extreme: bool
    received: int
    excluded_before: Counter = field(default_factory=Counter)
    #: The first reply of each sampled node whose content is valid, by node id.
    kept: dict[int, Message] = field(default_factory=dict)


@dataclass
class Reference:
    """An independent copy of the strategy's rule and step: ``θ - lr (F(x) + weight_decay θ)``.

    ``rule`` is built by the caller with ``build`` (and the same seed as the strategy's, if seeded); it is
    called on every round where the strategy's rule runs, so stateful rules (centred clipping) keep step.
    """

    rule: Aggregator
    lr: float
    weight_decay: float


FLOAT_KEYS = [k for k, a in GLOBAL.items() if np.issubdtype(a.numpy().dtype, np.floating)]


def vector(msg: Message) -> np.ndarray:
    """The float parameters of a reply, flattened in the global model's key order (Flower's Message API)."""
    arrays = msg.content["arrays"]
    return np.concatenate([arrays[k].numpy().astype(np.float32).ravel() for k in FLOAT_KEYS])


def run_round(strategy, server_round: int, num_nodes: int, plan: list[tuple[str, int, int]]) -> Outcome:
    """Sample ``num_nodes`` nodes, answer with ``plan``, aggregate. Exceptions propagate (a failure)."""
    nodes = list(range(1, num_nodes + 1))
    sent = strategy.configure_train(server_round, GLOBAL, ConfigRecord(), FakeGrid(nodes))
    msgs = {m.metadata.dst_node_id: m for m in sent}
    replies, first, kept = [], {}, {}
    for kind, index, seed in plan:
        node = nodes[index] if index < num_nodes else 10_000 + index
        to = msgs.get(node) or instruction(node, GLOBAL)
        replies.append(make_reply(kind, to, np.random.default_rng(seed)))
        if node in msgs and node not in first:
            first[node] = kind
            if kind in VALID_KINDS:
                kept[node] = replies[-1]
    valid_firsts = [k for k in first.values() if k in VALID_KINDS]
    extreme = any(k in EXTREME_KINDS for k in valid_firsts)
    before = Counter(strategy.excluded_total)
    arrays, metrics = strategy.aggregate_train(server_round, replies)
    return Outcome(
        arrays, metrics, len(valid_firsts), len(msgs) - len(first), extreme, len(replies), before,
        dict(sorted(kept.items())),
    )  # fmt: skip


def check_round(strategy, out: Outcome, *, exact: bool = True, reference: Reference | None = None) -> None:
    """Assert the properties of the module docstring (``exact``: no adversary rewrote the replies;
    ``reference``: also check the new model's value)."""
    m, entry = out.metrics, strategy.round_log[-1]
    assert m is not None, "aggregate_train returned no metrics"
    assert "resam-internal-error" not in m, entry["skipped"]  # a bug caught by the last-resort guard
    valid, excluded = int(m["resam-valid"]), int(m["resam-excluded"])
    assert valid == entry["valid"] and excluded == entry["excluded"], "metrics disagree with the round log"
    assert valid + excluded == out.received, f"{valid} kept + {excluded} excluded != {out.received} received"
    by_reason = {k[len("excluded-") :]: v for k, v in entry.items() if k.startswith("excluded-")}
    assert sum(by_reason.values()) == excluded, f"reasons {by_reason} do not add up to {excluded}"
    growth = Counter(strategy.excluded_total)
    growth.subtract(out.excluded_before)
    assert {k: v for k, v in growth.items() if v} == {k: v for k, v in by_reason.items() if v}
    assert entry["missing"] == out.expected_missing
    if exact:
        assert valid == out.expected_valid, f"kept {valid} replies, {out.expected_valid} were valid"
    f = round_f(strategy.num_byzantine, m)
    need = strategy.rule.min_inputs(f)
    if valid < need:
        assert out.arrays is None and "needs" in entry["skipped"], "too few replies but the round aggregated"
    elif not out.extreme:
        assert out.arrays is not None, f"round skipped with enough ordinary replies: {entry.get('skipped')}"
    assert (out.arrays is None) == ("skipped" in entry) == (m["resam-skipped"] == 1.0)
    if out.arrays is not None:
        check_model(out.arrays)
    if reference is not None:
        assert exact, "the value check needs the replies as sent (no adversary)"
        check_value(f, out, reference)


def round_f(num_byzantine: int, m: MetricRecord) -> int:
    """The ``f`` a round reports (``num_byzantine`` less the replies excluded as certainly faulty, so at
    least ``num_byzantine - excluded``); ``num_byzantine`` if it reports none."""
    f = int(m["resam-f"]) if "resam-f" in m else num_byzantine
    assert max(num_byzantine - int(m["resam-excluded"]), 0) <= f <= num_byzantine, f"f={f}"
    return f


def check_value(f: int, out: Outcome, ref: Reference) -> None:
    """``θ - lr (F(x) + λ θ)`` on the kept replies' vectors ``x`` (reference rule, the round's ``f``).

    Extreme rounds (values near float32's range) may overflow in one computation and not the other: the
    rule still runs (its state keeps step), the value is not compared.
    """
    if not out.kept:
        return
    x = torch.from_numpy(np.stack([vector(msg) for msg in out.kept.values()]))
    if x.shape[0] < ref.rule.min_inputs(f):
        return
    try:
        agg = ref.rule.aggregate(x, f).double()
    except ValueError:
        assert out.arrays is None, "the reference rule refused the replies the strategy aggregated"
        return
    if out.extreme or out.arrays is None:
        return
    theta = np.concatenate([GLOBAL[k].numpy().astype(np.float64).ravel() for k in FLOAT_KEYS])
    want = theta - ref.lr * (agg.numpy() + ref.weight_decay * theta)
    got = np.concatenate([out.arrays[k].numpy().astype(np.float64).ravel() for k in FLOAT_KEYS])
    scale = max(1.0, float(np.abs(theta).max()), ref.lr * float(agg.abs().max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale, err_msg="new model != θ - lr (F + λθ)")


def check_model(arrays: ArrayRecord) -> None:
    """Same keys, shapes, dtypes as :data:`GLOBAL`; finite floats; the integer buffer untouched."""
    assert list(arrays.keys()) == list(GLOBAL.keys()), f"keys {list(arrays.keys())}"
    for key, ref in GLOBAL.items():
        got, want = arrays[key].numpy(), ref.numpy()
        assert got.shape == want.shape and got.dtype == want.dtype, f"{key}: {got.shape} {got.dtype}"
        if np.issubdtype(got.dtype, np.floating):
            assert np.isfinite(got).all(), f"{key} is not finite"
        else:
            assert np.array_equal(got, want), f"{key} changed"
