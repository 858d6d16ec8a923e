"""10,000+ fuzzed rounds of ``ResilientAveraging.aggregate_train``: how many crash, how many break a property.

Usage::

    .venv/bin/python benchmarks/fuzz_rounds.py [--rounds 10000] [--seed 0] [--rules nnm+cwtm krum ...]
        [--max-nodes 12] [--max-replies 16] [--adversary-share 0.25] [--json out.json]

Each round: a rule (cycled over ``--rules``), ``f`` in ``0..2`` (kept feasible for the rule where possible),
``1..max-nodes`` sampled nodes, and ``0..max-replies`` replies of kinds drawn from
:data:`tests.reliability.fuzz_cases.KINDS` (NaN/inf, wrong shapes, dtypes, keys, records, error replies,
duplicates, replies from nodes that were not sampled, huge or zero vectors, corrupted Array bytes, npz
archives, npy headers and Array metadata that lie about dtype/shape, spoofed metrics...), with a seeded
generator. A share of the rounds runs with a simulated ALIE adversary that rewrites the Byzantine nodes'
replies. One strategy per rule lives across its rounds (stateful rules such as CC keep their state).

Counted per rule: ``crash`` (an exception escaped ``aggregate_train``), ``internal`` (an exception that
the strategy's last-resort guard caught: the run survives, but the round was lost to a bug), ``violation``
(a property of :func:`tests.reliability.fuzz_cases.check_round` failed), rounds aggregated and skipped.
Distinct failures are printed with a count and one plan that reproduces each. The target is 0, 0, 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resam_flower.strategies import ResilientAveraging  # noqa: E402
from resam_flower.strategies.adversary import SimulatedAdversary  # noqa: E402
from tests.reliability.fuzz_cases import KINDS, check_round, run_round  # noqa: E402

RULES = ["nnm+cwtm", "krum", "gm", "cc", "mda", "cwmed", "multikrum", "meamed", "bulyan", "dnc",
         "arc+cwtm", "bucketing(s=2)+cwmed", "caf", "smea", "mean"]  # fmt: skip


def build(rule: str, f: int, adversary: bool, seed: int):
    core = ResilientAveraging(rule, num_byzantine=f, lr=0.1, min_train_nodes=1, min_available_nodes=1,
                              node_stall_timeout=0.0, seed=seed)  # fmt: skip
    return SimulatedAdversary(core, "alie", f, seed=seed, z=1.0) if adversary and f else core


def plan_for(rng: np.random.Generator, num_nodes: int, max_replies: int) -> list[tuple[str, int, int]]:
    count = int(rng.integers(0, max_replies + 1))
    weights = np.ones(len(KINDS))
    weights[0] = 20.0  # mostly honest replies, so that rules actually run
    weights /= weights.sum()
    return [
        (
            str(KINDS[rng.choice(len(KINDS), p=weights)]),
            int(rng.integers(0, num_nodes + 2)),
            int(rng.integers(2**31)),
        )
        for _ in range(count)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rules", nargs="+", default=RULES)
    ap.add_argument("--max-nodes", type=int, default=12)
    ap.add_argument("--max-replies", type=int, default=16)
    ap.add_argument("--adversary-share", type=float, default=0.25)
    ap.add_argument("--show", type=int, default=5, help="distinct failures printed")
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args()
    logging.getLogger("flwr").setLevel(logging.CRITICAL)

    rng = np.random.default_rng(args.seed)
    strategies: dict[tuple, object] = {}
    stats: dict[str, Counter] = defaultdict(Counter)
    failures: list[dict] = []
    skip_reasons: Counter = Counter()
    t0 = time.perf_counter()
    for i in range(args.rounds):
        rule = args.rules[i % len(args.rules)]
        f = int(rng.integers(0, 3))
        adversary = bool(rng.random() < args.adversary_share)
        key = (rule, f, adversary)
        if key not in strategies:
            strategies[key] = build(rule, f, adversary, seed=args.seed)
        strategy = strategies[key]
        num_nodes = int(rng.integers(f + 1 if adversary else 1, args.max_nodes + 1))  # adversary: f < nodes
        rnd = len(strategy.round_log) + 1
        if rnd == 1:  # the first round refuses to start with fewer nodes than the rule needs
            num_nodes = max(num_nodes, strategy.rule.min_inputs(f))
        plan = plan_for(rng, num_nodes, args.max_replies)
        stats[rule]["rounds"] += 1
        stats[rule]["replies"] += len(plan)
        try:
            out = run_round(strategy, rnd, num_nodes, plan)
        except Exception as exc:  # noqa: BLE001 - counting crashes is the point
            stats[rule]["crash"] += 1
            failures.append(
                {
                    "rule": rule,
                    "f": f,
                    "adversary": adversary,
                    "nodes": num_nodes,
                    "plan": plan,
                    "what": "crash",
                    "error": "".join(traceback.format_exception_only(exc)).strip(),
                }
            )
            continue
        try:
            check_round(strategy, out, exact=not isinstance(strategy, SimulatedAdversary))
        except AssertionError as exc:
            what = "internal" if str(exc).startswith("internal error") else "violation"
            stats[rule][what] += 1
            failures.append({"rule": rule, "f": f, "adversary": adversary, "nodes": num_nodes, "plan": plan,
                             "what": what, "error": str(exc)})  # fmt: skip
            continue
        stats[rule]["aggregated" if out.arrays is not None else "skipped"] += 1
        if out.arrays is None:
            reason = strategy.round_log[-1]["skipped"]
            skip_reasons["too few valid replies" if "needs" in reason else reason.split(":")[0]] += 1
    wall = time.perf_counter() - t0

    total = Counter()
    for c in stats.values():
        total.update(c)
    print(f"{args.rounds} fuzzed rounds, {total['replies']} replies, seed {args.seed}, {wall:.1f} s "
          f"({1e3 * wall / args.rounds:.2f} ms/round)\n")  # fmt: skip
    cols = ("rounds", "aggregated", "skipped", "crash", "internal", "violation")
    print(f"{'rule':22s}" + "".join(f"{c:>11s}" for c in cols))
    for rule, c in [*((r, stats[r]) for r in args.rules), ("total", total)]:
        print(f"{rule:22s}" + "".join(f"{c[k]:11d}" for k in cols))
    print("skipped rounds by reason: " + ", ".join(f"{k}: {v}" for k, v in skip_reasons.most_common()))
    distinct = Counter((f["what"], f["error"]) for f in failures)
    for (what, error), count in distinct.most_common(args.show):
        example = next(f for f in failures if (f["what"], f["error"]) == (what, error))
        print(f"\n{count} x {what}: {error}\n  e.g. {json.dumps(example)[:1500]}")
    if args.json:
        report = {
            "rounds": args.rounds,
            "seed": args.seed,
            "wall_s": wall,
            "stats": stats,
            "skips": skip_reasons,
        }
        Path(args.json).write_text(json.dumps({**report, "failures": failures[:50]}, indent=1))
    sys.exit(1 if total["crash"] or total["internal"] or total["violation"] else 0)


if __name__ == "__main__":
    main()
