r"""RESAM's claims checked on a sweep's results, each with a 95 % confidence interval over seeds.

Per rule :math:`r`, momentum :math:`\beta` and seed :math:`s` (the seed fixes the data split, the
Byzantine nodes and the sampling, so cells of one seed are paired across rules, attacks and β):

* :math:`W_{r,\beta,s} = \min_a \mathrm{acc}(r, a, \beta, s)` over the attacks run (no attack excluded): the
  worst case of that seed;
* :math:`N_{r,\beta,s} = \mathrm{acc}(r, \text{none}, \beta, s)`: the rule with every node honest.

Each claim is a per-seed difference :math:`D_s`, reported as mean ± the half-width of a two-sided 95 %
Student-t interval over the seeds (:math:`t_{0.975, k-1}\, \mathrm{sd}/\sqrt{k}`, :math:`k` seeds). The
verdict reads the interval against the claim's bound: **agrees** when the whole interval is on the claim's
side, **disagrees** when the whole interval is on the other side, **inconclusive** when it straddles the
bound, and **1 seed** (no interval; the point estimate's side is shown) when only one seed finished.

Claims (points of accuracy; ``near`` and ``fail`` are parameters, 5 and 10 by default):

1. *momentum keeps the worst case near no attack*: :math:`N - W` at each β > 0, bound ``near`` (and at
   β = 0 for comparison, where the claim expects it to fail);
2. *without momentum, ALIE or FOE break the rule*: :math:`N - \min(\mathrm{ALIE}, \mathrm{FOE})` at β = 0,
   above ``fail``;
3. *momentum helps every rule*: :math:`W_\beta - W_0` at each β > 0, above 0;
4. *what NNM adds*: :math:`W(\mathrm{nnm}{+}r) - W(r)` at every β, above 0.

Each claim also gets a row :data:`POOLED` over every rule's per-seed differences: the average effect across
rules, with an interval that treats (rule, seed) pairs as independent replicates — they are not (a seed is
shared by all rules), so it is descriptive and carries no verdict; the per-rule rows are the test.

Three forms: :func:`claims_markdown` (one row per claim and rule, each seed's difference),
:func:`claims_wide_markdown` (one row per rule, one column per claim) and :func:`claims_summary_markdown`
(one bullet per claim: the seeds on its side, the rules of each verdict).

The worst case of claims 1 and 2 is over the attacks that rule ran (the ``cells`` text names them); claims 3
and 4 compare worst cases over the attacks both sides ran. A rule's cells may differ in learning rate across
β (each β its tuned rate) and claim 4's two rules may run at different rates (the ``cells`` text says so),
but two finished cells of one (rule, β, attack, seed) — the same cell at two rates, two α or two f — are an
error naming the keys they differ in: select one setting with ``where`` (``--where alpha=1``).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, NamedTuple

from .results import NO_ATTACK, Run, attack_of, config_differences

__all__ = ["Arm", "Interval", "arm_of", "t_quantile", "interval", "seed_table", "claims_rows",
           "claims_markdown", "claims_wide_markdown", "claims_summary_markdown"]

# Two-sided 95 % Student-t quantiles t_{0.975, df}, df = 1..30 (beyond: the Cornish-Fisher expansion).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)
_Z975 = 1.959963984540054


def t_quantile(df: int) -> float:
    """:math:`t_{0.975}` with ``df`` degrees of freedom: the table for df ≤ 30, above it the Cornish-Fisher
    expansion in 1/df (Abramowitz & Stegun 26.7.5; error below 1e-5 from df = 31)."""
    if df < 1:
        raise ValueError(f"df={df}: needs at least 1 degree of freedom (2 samples)")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    terms = (
        (z**3 + z) / 4,
        (5 * z**5 + 16 * z**3 + 3 * z) / 96,
        (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
        (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160,
    )
    return z + sum(term / df ** (i + 1) for i, term in enumerate(terms))


@dataclass(frozen=True)
class Interval:
    """Mean and 95 % half-width (``nan`` with one sample) of ``k`` per-seed values, in points."""

    mean: float
    half: float
    k: int

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half

    def __str__(self) -> str:
        if self.k < 2:
            return f"{self.mean:+.1f} (1 seed)"
        return f"{self.short} (k={self.k})"

    @property
    def short(self) -> str:
        """``+1.2 ± 3.4`` (``+1.2`` with one seed): the value without its seed count."""
        return f"{self.mean:+.1f}" if self.k < 2 else f"{self.mean:+.1f} ± {self.half:.1f}"

    def verdict(self, bound: float, above: bool) -> str:
        """``agrees`` / ``disagrees`` / ``inconclusive`` / ``1 seed: ...`` for the claim ``D > bound``
        (``above``) or ``D < bound``."""
        if self.k < 2:
            side = (self.mean > bound) == above
            return "1 seed: " + ("agrees" if side else "disagrees") + " (no CI)"
        if (self.low > bound) if above else (self.high < bound):
            return "agrees"
        if (self.high < bound) if above else (self.low > bound):
            return "disagrees"
        return "inconclusive"


def interval(values: list[float]) -> Interval:
    """Mean ± 95 % Student-t half-width of ``values`` (already in points)."""
    if not values:
        raise ValueError("no values")
    k = len(values)
    mean = statistics.fmean(values)
    half = t_quantile(k - 1) * statistics.stdev(values) / math.sqrt(k) if k > 1 else float("nan")
    return Interval(mean, half, k)


class Arm(NamedTuple):
    """A momentum setting: β and the lr schedule when it is not ``constant`` (``"debiased"``): two arms of
    one β (β = 0.99 at a constant rate and bias-corrected) are compared as two settings. Formats as
    ``0.99`` or ``0.99 debiased``."""

    beta: float
    schedule: str = ""

    def __format__(self, spec: str) -> str:
        return format(self.beta, spec or "g") + (f" {self.schedule}" if self.schedule else "")


#: β = 0 at a constant rate: the arm every momentum arm is compared with (claims 2 and 3).
NO_MOMENTUM = Arm(0.0)


def arm_of(config: dict[str, Any]) -> Arm:
    """The :class:`Arm` of a run's config."""
    schedule = str(config.get("lr-schedule") or "constant")
    return Arm(float(config.get("momentum", 0.0)), "" if schedule == "constant" else schedule)


def _collision(a: Run, b: Run) -> ValueError:
    both = (f"cells {a.path.name} ({a.path.parent}) and {b.path.name} ({b.path.parent}) are both "
            f"{a.config.get('aggregator')}, β={arm_of(a.config):g}, {attack_of(a.config)}, seed "
            f"{a.config.get('seed', 0)}")
    differ = config_differences(a.config, b.config)
    if not differ:
        return ValueError(f"{both}, with the same config: the same cell twice; give each cell once")
    shown = ", ".join(f"{k} {a.config.get(k)!r} vs {b.config.get(k)!r}" for k in differ)
    first = differ[0]
    return ValueError(f"{both}; they differ in {shown}: select one setting "
                      f"(--where {first}={a.config.get(first)})")


def seed_table(runs: list[Run]) -> dict[tuple[Any, Arm], dict[str, dict[int, float]]]:
    """``{(rule, arm): {attack: {seed: accuracy in points}}}`` of the finished runs (:class:`Arm`: β and
    its schedule); :class:`ValueError` when two runs share (rule, arm, attack, seed) (module docstring)."""
    table: dict[tuple[Any, Arm], dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    seen: dict[tuple, Run] = {}
    for run in runs:
        if run.accuracy is None:
            continue
        key = (run.config.get("aggregator"), arm_of(run.config))
        attack, seed = attack_of(run.config), int(run.config.get("seed", 0))
        if (key, attack, seed) in seen:
            raise _collision(seen[(key, attack, seed)], run)
        seen[(key, attack, seed)] = run
        table[key][attack][seed] = 100.0 * float(run.accuracy)
    return table


def _rates(runs: list[Run]) -> dict[tuple[Any, Arm], set[str]]:
    """``{(rule, arm): {learning rates, as text}}`` of the finished runs."""
    rates: dict[tuple[Any, Arm], set[str]] = defaultdict(set)
    for run in runs:
        if run.accuracy is not None:
            key = (run.config.get("aggregator"), arm_of(run.config))
            rates[key].add(f"{float(run.config['lr']):g}" if "lr" in run.config else "?")
    return rates


def _names(attacks: set[str]) -> str:
    """``{"alie(z='lab')", "sf"}`` -> ``"alie, sf"`` (short names, sorted)."""
    return ", ".join(sorted({a.split("(")[0] for a in attacks})) or "no attack run"


def _paired(a: dict[int, float], b: dict[int, float]) -> dict[int, float]:
    """``{seed: a - b}`` over the seeds both ran, in seed order."""
    return {s: a[s] - b[s] for s in sorted(set(a) & set(b))}


def _attacks(cells: dict[str, dict[int, float]], prefixes: tuple[str, ...] | None = None) -> set[str]:
    """The attacks of ``cells`` (no attack excluded), those named ``prefix(...)`` only if ``prefixes``."""
    return {a for a in cells if a != NO_ATTACK and (prefixes is None or a.split("(")[0] in prefixes)}


def _worst(cells: dict[str, dict[int, float]], attacks: set[str] | None = None) -> dict[int, float]:
    """Per seed, the minimum over ``attacks`` (default: every attack of ``cells``), for the seeds that ran
    all of them; ``{}`` when an attack is missing or none is given."""
    attacks = _attacks(cells) if attacks is None else attacks
    if not attacks or not attacks <= set(cells):
        return {}
    seeds = set.intersection(*(set(cells[a]) for a in attacks))
    return {s: min(cells[a][s] for a in attacks) for s in seeds}


def _worst_pair(a: dict[str, dict[int, float]], b: dict[str, dict[int, float]]) -> dict[int, float]:
    """Per-seed worst case of ``a`` minus that of ``b``, over the attacks both ran (a partial sweep compares
    like with like)."""
    common = _attacks(a) & _attacks(b)
    return _paired(_worst(a, common), _worst(b, common))


def claims_rows(runs: list[Run], near: float = 5.0, fail: float = 10.0) -> list[dict[str, str]]:
    """One row per (claim, rule), then the :data:`POOLED` row of each claim: ``claim``, ``rule``, ``cells``,
    ``value`` (text), ``verdict``, ``interval`` (the :class:`Interval`, ``None`` when not run), ``diffs``
    (the per-seed differences), ``seeds`` (their seeds; empty in pooled rows), ``bound`` and ``above``."""
    table = seed_table(runs)
    rates = _rates(runs)
    rules = sorted({r for r, _ in table if any(a != NO_ATTACK for a in table[(r, _)])}, key=str)
    if not rules:
        raise ValueError(f"no attacked cell among the {sum(r.accuracy is not None for r in runs)} finished "
                         "cells selected: the claims compare attacked cells, nothing to compare")
    betas = sorted({b for _, b in table})
    positive = [b for b in betas if b.beta > 0]
    rows: list[dict[str, str]] = []

    def add(claim: str, rule: str, cells: str, diffs: dict[int, float] | list[float], bound: float,
            above: bool) -> None:
        seeds = list(diffs) if isinstance(diffs, dict) else []
        diffs = list(diffs.values()) if isinstance(diffs, dict) else diffs
        row = {"claim": claim, "rule": rule, "cells": cells, "diffs": diffs, "seeds": seeds, "bound": bound,
               "above": above}
        if not diffs:
            rows.append({**row, "value": "—", "verdict": "not run", "interval": None})
            return
        ci = interval(diffs)
        verdict = DESCRIPTIVE if rule == POOLED else ci.verdict(bound, above)
        rows.append({**row, "value": str(ci), "verdict": verdict, "interval": ci})

    for beta in betas:
        for rule in rules:
            cells = table.get((rule, beta), {})
            add(f"1. β={beta:g}: no attack − worst case < {near:g}", rule,
                f"{rule}, β={beta:g}: worst of {_names(_attacks(cells))} vs none",
                _paired(cells.get(NO_ATTACK, {}), _worst(cells)), near, above=False)
    for rule in rules:
        cells = table.get((rule, NO_MOMENTUM), {})
        both = _attacks(cells, ("alie", "foe"))
        add(f"2. β=0: no attack − min(ALIE, FOE) > {fail:g}", rule,
            f"{rule}, β=0: worst of {_names(both)} vs none",
            _paired(cells.get(NO_ATTACK, {}), _worst(cells, both)), fail, above=True)
    for beta in positive:
        for rule in rules:
            high, low = table.get((rule, beta), {}), table.get((rule, NO_MOMENTUM), {})
            add(f"3. worst case β={beta:g} − β=0 > 0", rule,
                f"{rule}: worst of {_names(_attacks(high) & _attacks(low))}, β={beta:g} vs 0",
                _worst_pair(high, low), 0.0, above=True)
    for beta in betas:
        for rule in rules:
            if str(rule).startswith("nnm+") or (f"nnm+{rule}", beta) not in table:
                continue
            nnm, alone = table.get((f"nnm+{rule}", beta), {}), table.get((rule, beta), {})
            lr_nnm, lr_alone = ("/".join(sorted(rates[(r, beta)])) for r in (f"nnm+{rule}", rule))
            at = "" if lr_nnm == lr_alone else f" (lr {lr_nnm} vs {lr_alone})"
            add(f"4. β={beta:g}: worst case nnm+rule − rule > 0", rule,
                f"nnm+{rule} vs {rule}{at}, β={beta:g}: worst of {_names(_attacks(nnm) & _attacks(alone))}",
                _worst_pair(nnm, alone), 0.0, above=True)
    for claim in list(dict.fromkeys(r["claim"] for r in rows)):
        mine = [r for r in rows if r["claim"] == claim]
        if len(mine) > 1:
            add(claim, POOLED, "every rule's per-seed differences together (rules share seeds)",
                [d for r in mine for d in r["diffs"]], mine[0]["bound"], mine[0]["above"])
    return rows


def claims_markdown(runs: list[Run], near: float = 5.0, fail: float = 10.0) -> str:
    """The claims table as Markdown (values are per-seed differences in points, mean ± 95 % CI, and each
    seed's own difference: whether the seeds agree in sign shows even when the interval is wide)."""
    lines = [
        "| claim | rule | cells | difference (points, mean ± 95 % CI) | per seed | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for row in claims_rows(runs, near, fail):
        per_seed = "—"  # a pooled row mixes rules: its seeds are not listed
        if row["seeds"]:
            per_seed = ", ".join(f"s{s} {d:+.1f}" for s, d in zip(row["seeds"], row["diffs"], strict=True))
        cells = [row["claim"], row["rule"], row["cells"], row["value"], per_seed, row["verdict"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


#: The row of a claim that pools every rule's per-seed differences (rules taken as replicates: they share
#: seeds and data, so this interval is narrower than an independent one would be).
POOLED = "all rules (pooled)"
#: The verdict of a :data:`POOLED` row: none (its interval is too narrow to test a claim with).
DESCRIPTIVE = "descriptive (no verdict)"

#: Short verdict marks of the wide table.
MARKS = {"agrees": "✓", "disagrees": "✗", "inconclusive": "?", "not run": "—", DESCRIPTIVE: ""}


def _mark(verdict: str) -> str:
    if verdict.startswith("1 seed: "):
        return MARKS.get(verdict[len("1 seed: "):].split(" ")[0], "?") + "¹"
    return MARKS.get(verdict, "?")


def claims_wide_markdown(runs: list[Run], near: float = 5.0, fail: float = 10.0) -> str:
    """The claims table with one row per rule and one column per claim: ``value mark`` (✓ agrees, ✗ disagrees,
    ? inconclusive, ¹ one seed: no interval)."""
    rows = claims_rows(runs, near, fail)
    claims = list(dict.fromkeys(r["claim"] for r in rows))
    rules = list(dict.fromkeys(r["rule"] for r in rows))
    def text(row: dict) -> str:
        ci = row["interval"]
        if ci is None:
            return "—"
        return f"{ci.short} {_mark(row['verdict'])}".rstrip()

    cell = {(r["claim"], r["rule"]): text(r) for r in rows}
    lines = ["| rule | " + " | ".join(claims) + " |", "|---|" + "---|" * len(claims)]
    for rule in rules:
        lines.append(f"| {rule} | " + " | ".join(cell.get((c, rule), "") for c in claims) + " |")
    return "\n".join(lines) + "\n"


#: Verdict groups of :func:`claims_summary_markdown`, in order (a one-seed verdict is ``provisional``).
_GROUPS = ("agrees", "disagrees", "inconclusive", "provisional", "not run")


def _group(verdict: str) -> str:
    return "provisional" if verdict.startswith("1 seed: ") else verdict


def _seed_side(rows: list[dict], label: str) -> str:
    """``label k of n (low to high)``: how many per-seed differences of ``rows`` lie on the claim's side."""
    diffs = [(d, r) for r in rows for d in r["diffs"]]
    side = sum((d > r["bound"]) if r["above"] else (d < r["bound"]) for d, r in diffs)
    values = [d for d, _ in diffs]
    return f"{label}{side} of {len(values)} ({min(values):+.1f} to {max(values):+.1f})"


def claims_summary_markdown(runs: list[Run], near: float = 5.0, fail: float = 10.0) -> str:
    """The claims table read claim by claim, as Markdown bullets: per claim (and arm), how many per-seed
    differences lie on the claim's side and their range — the rules alone and behind NNM apart when both
    ran — then the rules of each verdict with their mean ± 95 % CI (a one-seed value is *provisional*).
    The numbers are :func:`claims_rows`' own; the pooled rows are left out (they carry no verdict)."""
    rows = [r for r in claims_rows(runs, near, fail) if r["rule"] != POOLED]
    lines = []
    for claim in dict.fromkeys(r["claim"] for r in rows):
        mine = [r for r in rows if r["claim"] == claim]
        ran = [r for r in mine if r["diffs"]]
        alone = [r for r in ran if not str(r["rule"]).startswith("nnm+")]
        nnm = [r for r in ran if str(r["rule"]).startswith("nnm+")]
        if alone and nnm:
            side = _seed_side(alone, "rules alone ") + ", " + _seed_side(nnm, "behind NNM ")
        else:
            side = _seed_side(ran, "") if ran else "none run"
        counts = sorted({r["interval"].k for r in ran})
        seeds = ""
        if counts:
            span = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
            seeds = f" ({span} seed{'' if span == '1' else 's'} a rule)"
        text = f"- **{claim}**{seeds} — per-seed differences on the claim's side: {side}."
        for group in _GROUPS:
            members = [r for r in mine if _group(r["verdict"]) == group]
            if not members:
                continue
            if group == "not run":
                names = ", ".join(str(r["rule"]) for r in members)
            else:
                names = ", ".join(f"{r['rule']} {r['interval'].short}" for r in members)
            text += f" {group.capitalize()} ({len(members)}): {names}."
        lines.append(text)
    return "\n".join(lines) + "\n"
