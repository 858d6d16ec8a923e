"""The ``resam`` command: run sweeps, plot and report their results, estimate κ, run the demo.

::

    resam sweep simulations/paper_mnist.toml      # results/<sweep>/<cell>/, resumes finished cells
    resam sweep simulations/tiny.toml --jobs 4    # 4 cells at once (in-process engine, 1 thread each)
    resam sweep simulations/tiny.toml --engine ray  # one cell at a time in Flower's Ray simulation
    resam sweep simulations/tiny.toml --ray-address auto  # cells as tasks on a running Ray cluster
    resam sweep simulations/lab_mnist.toml --skip-exported reproduction/lab_mnist  # only what it lacks
    resam export results/lab_mnist --out reproduction/lab_mnist --merge  # add the new cells to that export
    resam plot results/paper_mnist                # PNG curves and heatmaps in results/paper_mnist/plots/
    resam report results/paper_mnist              # Markdown table (also written to report.md)
    resam progress simulations/lab_mnist.toml --from reproduction/lab_mnist  # cells finished per rule, seed
    resam tables REPRODUCTION.md --check          # fail if a generated table no longer matches its results
    resam kappa --n 7 --f 2 --d 2                 # empirical κ by adversarial search vs the proven κ
    resam demo                                    # what `make run` runs

``plot`` and ``report`` accept a results folder or the sweep's TOML file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["main", "build_parser"]

DEFAULT_KAPPA_RULES = "mean,cwtm,cwmed,meamed,mda,krum"


def _folder(path: str | Path | None) -> Path | None:
    """``path`` (a folder to read or write, maybe not made yet); :class:`ValueError` when it, or the first
    of its parents that exists, is a file."""
    if path is None:
        return None
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise ValueError(f"{part} is a file, not a folder")
            break
    return path


def _sweep_dir(target: str, results: str | None) -> Path:
    from .experiments import load_sweep

    path = Path(target)
    if path.suffix == ".toml":
        return _folder(load_sweep(path).directory(_folder(results)))
    return _folder(path)


def _target_runs(target: str, results: str | None) -> tuple[Path, list]:
    """The results folder of ``target`` and its finished runs: a folder's (or export's) every one, or, for a
    sweep file, those the file plans, with their saved config (:func:`.experiments.results.planned_runs`)."""
    from .experiments import load_sweep
    from .experiments.results import load_runs, planned_runs

    folder = _sweep_dir(target, results)
    runs = load_runs(folder)
    if Path(target).suffix == ".toml":
        sweep = load_sweep(target)
        runs = planned_runs(runs, sweep.cells(results), folder, target)
    return folder, runs


def _backend(args: argparse.Namespace) -> dict | None:
    from .simulation import backend_config

    if args.num_cpus is None and args.cpus_per_client is None:
        return None
    return backend_config(args.num_cpus, args.cpus_per_client or 1.0)


def sweep_engine_and_jobs(sweep, engine: str | None, jobs: int | None) -> tuple[str, int]:
    """The CLI's choice: ``--engine``, else each cell's ``engine``, else the file's ``[sweep] engine``, else
    ``inprocess`` (``ray+inprocess`` when cells differ); ``--jobs``, else every core (``os.cpu_count()``) when
    a cell runs in-process and 1 when all run on Ray (which spreads one cell over the machine)."""
    import os

    from .experiments.runner import resolve_engine

    chosen = resolve_engine(sweep, engine or sweep.engine or "inprocess")
    engines = {chosen} if engine else {c.engine or chosen for c in sweep.cells()}
    if jobs is None:
        jobs = (os.cpu_count() or 1) if "inprocess" in engines else 1
    return "+".join(sorted(engines)), jobs


def cmd_sweep(args: argparse.Namespace) -> int:
    from .experiments import load_sweep, run_sweep
    from .experiments.hooks import exit_on_interrupt
    from .experiments.report import write_report

    sweep = load_sweep(args.file)
    _folder(sweep.directory(_folder(args.results)))
    if args.ray_address and args.engine not in (None, "inprocess"):
        raise ValueError(
            "--ray-address runs each cell on the in-process engine in a Ray task (no --engine ray)"
        )
    forced = "inprocess" if args.ray_address else args.engine
    engine, jobs = sweep_engine_and_jobs(sweep, forced, args.jobs)
    sweep.engine = sweep.engine or "inprocess"  # the CLI's default engine (run_sweep's is Ray)
    if args.skip_exported and args.no_resume:
        raise ValueError("--skip-exported skips cells an export holds; --no-resume reruns every cell: "
                         "give one of them")
    cells = sweep.cells(args.results)
    if args.dry_run:
        from .experiments.runner import finished_in_exports, is_finished, select_cells

        exported = finished_in_exports(cells, args.skip_exported) if args.skip_exported else {}
        cells = select_cells(sweep, cells, only=args.only, where=_where(args.where))

        for cell in cells:
            state = ("to rerun" if args.no_resume else "finished") if is_finished(cell) else (
                "finished (exported)" if cell.name in exported else "to run")
            print(f"{cell.name}\t{state}\t{json.dumps(cell.varying, default=str)}")
        print(f"{len(cells)} cells -> {sweep.directory(args.results)}")
        return 0
    t0 = time.perf_counter()
    selection = "".join([f" --only {' '.join(args.only)}" if args.only else "",
                         f" --where {' '.join(args.where)}" if args.where else "",
                         f" --skip-exported {' '.join(args.skip_exported)}" if args.skip_exported else ""])
    stop = exit_on_interrupt(
        f"interrupted: finished cells are kept; `resam sweep {args.file}{selection}` resumes"
    )
    with stop:
        results = run_sweep(
            sweep,
            args.results,
            resume=not args.no_resume,
            progress=not args.no_progress,
            share_ray=not args.fresh_ray,
            reuse_actors=not args.fresh_actors,
            worker_niceness=None if args.worker_niceness < 0 else args.worker_niceness,
            backend=_backend(args),
            only=args.only,
            where=_where(args.where),
            verbose=args.verbose,
            engine=forced,
            jobs=jobs,
            threads_per_cell=args.threads_per_cell,
            ray_address=args.ray_address,
            exported=args.skip_exported,
        )
    failed = [r for r in results if r.status == "failed"]
    where = f"Ray cluster {args.ray_address}" if args.ray_address else f"{jobs} job(s)"
    ran = sum(r.status == "done" for r in results)
    cached = sum(r.status == "cached" for r in results)
    print(
        f"[resam] sweep {sweep.name} ({engine} engine, {where}): {ran} cells run, {cached} "
        f"already finished, {len(failed)} failed, in {time.perf_counter() - t0:.0f}s -> "
        f"{sweep.directory(args.results)}"
    )
    if not args.no_report and any(r.status != "failed" for r in results):
        from .experiments.results import load_runs, planned_runs

        folder = sweep.directory(args.results)  # its cells that this file plans, as it plans them
        runs = planned_runs(load_runs(folder), sweep.cells(args.results), folder, args.file)
        if args.skip_exported:  # the whole sweep: the exports' cells that did not run again here too
            from .experiments.runner import finished_in_exports

            here = {run.path.name for run in runs}
            exported = finished_in_exports(sweep.cells(args.results), args.skip_exported)
            runs += [run for name, run in sorted(exported.items()) if name not in here]
        text, path = write_report(folder, sweep.name, runs=runs)
        print(text)
        print(f"[resam] report: {path}")
    return 1 if failed else 0


def _runs(targets: list[str], results: str | None, where: dict[str, str]) -> list:
    """The finished runs of one or more result folders (or sweep files), those matching ``where``; a cell in
    two of them is an error (:func:`~.experiments.results.combine`)."""
    from .experiments.results import combine, select

    runs = select(combine([_target_runs(t, results) for t in targets]), where)
    if not runs:
        raise ValueError(f"no finished cell in {' '.join(targets)}: run `resam sweep` first")
    return runs


def cmd_plot(args: argparse.Namespace) -> int:
    from .experiments.plots import plot_sweep
    from .experiments.results import combine

    sources = [_target_runs(t, args.results) for t in args.target]
    folders = [folder for folder, _ in sources]
    paths = plot_sweep(folders if len(folders) > 1 else folders[0], _folder(args.out),
                       where=_where(args.where), runs=combine(sources))
    for path in paths:
        print(path)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .experiments.report import markdown_table, write_report

    if args.where is not None or len(args.target) > 1:
        # a selection (bare --where: every cell) or several folders: printed, no report.md written
        print(markdown_table(_runs(args.target, args.results, _where(args.where))))
        return 0
    folder, runs = _target_runs(args.target[0], args.results)
    text, path = write_report(folder, runs=runs)
    print(text)
    print(f"[resam] report: {path}", file=sys.stderr)
    return 0


def cmd_progress(args: argparse.Namespace) -> int:
    from .experiments import load_sweep
    from .experiments.doctables import progress_markdown

    sweep = load_sweep(args.file)
    folder = _folder(args.source) or sweep.directory(_folder(args.results))
    # the sweep's own folder may not exist yet (no cell finished); a --from folder must
    print(progress_markdown(sweep, folder, missing_ok=args.source is None), end="")
    return 0


#: The commands whose tables a document may embed (``resam tables``): each prints only what it computes.
TABLE_COMMANDS = ("report", "claims", "progress")


def render_table(command: str) -> str:
    """The output of ``resam <command>`` for a generated block of a document, computed without writing any
    file (``report`` prints its table, not the report.md it would write)."""
    import contextlib
    import io
    import shlex

    argv = shlex.split(command)
    if not argv or argv[0] not in TABLE_COMMANDS:
        raise ValueError(f"`{command}` is not one of {', '.join(TABLE_COMMANDS)}")
    if argv[0] == "report" and "--where" not in argv:
        argv.append("--where")  # an empty selection: every cell, printed without writing report.md
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = build_parser().parse_args(argv)
    except SystemExit:
        lines = err.getvalue().strip().splitlines() or ["bad arguments"]
        raise ValueError(f"`{command}`: {lines[-1]}") from None
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        args.func(args)
    return out.getvalue()


def cmd_tables(args: argparse.Namespace) -> int:
    import contextlib
    import difflib

    from .app.results import atomic_write_text
    from .experiments.doctables import blocks, refresh, stray_markers

    path = Path(args.file)
    if not path.is_file():
        raise ValueError(f"no Markdown document {path}" + (" (it is a folder)" if path.is_dir() else ""))
    text = path.read_text()
    strays = [f"{path}: {line}" for line in stray_markers(text)]
    if not blocks(text):
        strays.append(f"{path}: no generated table (no `<!-- resam COMMAND -->` ... `<!-- /resam -->` block)")
    if strays and args.check:
        raise ValueError("; ".join(strays))
    for line in strays:
        print(f"[resam] warning: {line}", file=sys.stderr)
    with contextlib.chdir(path.parent.resolve()):  # the blocks' paths are relative to the document
        new, stale = refresh(text, render_table)
    for block in stale:
        print(f"{path}:{block.line}: stale: resam {block.command}", file=sys.stderr)
    if args.check:
        if stale:
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True),
                                                       f"{path} (committed)", f"{path} (from the results)"))
            print(f"[resam] {len(stale)} stale table(s) in {path}: `resam tables {args.file}` rewrites them",
                  file=sys.stderr)
            return 1
        print(f"[resam] every generated table of {path} matches its results", file=sys.stderr)
        return 0
    if stale:
        atomic_write_text(path, new)
    print(f"[resam] {path}: {len(stale)} table(s) rewritten{'' if stale else ' (all up to date)'}",
          file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .experiments import load_sweep
    from .experiments.compact import export_compact, exported_cells

    if args.merge and args.force:
        raise ValueError("--merge keeps the export's cells, --force replaces them: give one of them")
    toml = args.target.endswith(".toml")
    source, runs = (_target_runs(args.target, args.results) if toml
                    else (_sweep_dir(args.target, args.results), None))
    planned = {c.name for c in load_sweep(args.target).cells(args.results)} if toml and args.merge else None
    before = len(exported_cells(args.out)) if args.merge else 0
    cells, rows = export_compact(source, _folder(args.out), every=args.every, force=args.force, runs=runs,
                                 merge=args.merge, planned=planned)
    kept = f" ({before} were there, {cells - before} added)" if args.merge else ""
    print(f"[resam] exported {cells} cells{kept}, {rows} round rows of {source} -> {args.out}")
    return 0


def cmd_claims(args: argparse.Namespace) -> int:
    from .experiments.claims import claims_markdown, claims_summary_markdown, claims_wide_markdown

    runs = _runs(args.target, args.results, _where(args.where))
    table = (claims_wide_markdown if args.wide else claims_summary_markdown if args.summary
             else claims_markdown)
    print(table(runs, near=args.near, fail=args.fail), end="")
    return 0


def _where(items: list[str] | None) -> dict[str, str]:
    """``--where KEY=VALUE ...`` as ``{key: value}`` (a config value matches when it reads as ``value``)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--where {item!r}: expected KEY=VALUE, e.g. attack=alie")
        if key in out and out[key] != value:
            raise SystemExit(f"--where {key}: given twice ({out[key]!r} and {value!r}); one value a key")
        out[key] = value
    return out


def _rule_specs(values: list[str]) -> list[str]:
    """``["mean", "mda,cwtm"]`` -> ``["mean", "mda", "cwtm"]`` (``;`` separates specs that contain commas)."""
    out = []
    for value in values:
        out += [r.strip() for r in value.split(";" if ";" in value else ",") if r.strip()]
    return out


def cmd_kappa(args: argparse.Namespace) -> int:
    import warnings

    from .experiments.kappa import describe, empirical_kappa, kappa_table

    rules = _rule_specs(args.rules)
    if not rules:
        raise ValueError(f"--rules {' '.join(map(repr, args.rules))}: no rule given (e.g. "
                         f"{DEFAULT_KAPPA_RULES})")
    estimates = []
    for rule in rules:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            estimates.append(
                empirical_kappa(
                    rule,
                    args.n,
                    args.f,
                    args.d,
                    restarts=args.restarts,
                    steps=args.steps,
                    seed=args.seed,
                    include_bound_input=not args.no_bound_input,
                )
            )
        if not args.json:
            e = estimates[-1]
            print(f"  {e.rule}: κ̂ = {e.empirical:.4g}", file=sys.stderr)
    if args.json:
        print(json.dumps([describe(e) for e in estimates], indent=2, default=str))
    else:
        print(kappa_table(estimates))
        print(
            "\nκ̂: largest ‖F(x) - mean_S‖ / max_(i,j in S) ‖x_i - x_j‖ found (a lower estimate of the rule's "
            "true κ); proven κ: rule.kappa(n, f, d); lower bound f/(n-f) holds for every rule."
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .experiments.demo import run_demo
    from .experiments.hooks import exit_on_interrupt

    with exit_on_interrupt("interrupted: finished cells are kept; `resam demo` resumes"):
        return run_demo(_folder(args.results), fresh=args.fresh, progress=not args.no_progress)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``resam``."""
    parser = argparse.ArgumentParser(
        prog="resam",
        description="RESAM experiments on Flower: run sweeps, plot and report them, estimate κ, run a demo.",
        epilog="examples:\n" + __doc__.split("::")[1].split("``plot``")[0].rstrip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sweep", help="run the cells of an experiment file (resumes finished cells)")
    p.add_argument("file", help="experiment file, e.g. simulations/paper_mnist.toml")
    p.add_argument("--results", help="results root (default: the file's [sweep] results, else 'results')")
    p.add_argument("--only", nargs="+", help="run only cells whose name contains one of these strings")
    p.add_argument("--where", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="run only cells with these run-config values, e.g. seed=0 alpha=1")
    p.add_argument("--dry-run", action="store_true", help="list the cells and whether they are finished")
    p.add_argument("--no-resume", action="store_true", help="rerun finished cells too")
    p.add_argument("--skip-exported", nargs="+", action="extend", metavar="EXPORT",
                   help="count the cells these exports (resam export --out folders) hold with the planned "
                   "config as finished, e.g. a committed reproduction; add the new ones with export --merge")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-report", action="store_true", help="do not print/write the report at the end")
    p.add_argument(
        "--jobs",
        type=int,
        help="cells at once, one process each (in-process engine; default: os.cpu_count(); Ray: 1)",
    )
    p.add_argument(
        "--engine",
        choices=["ray", "inprocess"],
        help="engine of every cell (default: each cell's engine key, else the file's [sweep] engine, else "
        "inprocess): Flower's Ray simulation, or "
        "the same ServerApp/ClientApp in one process (bit-identical final models)",
    )
    p.add_argument(
        "--threads-per-cell",
        type=int,
        default=1,
        help="intra-op threads of each cell's process with --jobs > 1, and the CPUs each cell's Ray task "
        "asks for with --ray-address (default 1)",
    )
    p.add_argument(
        "--ray-address",
        help="run the cells as Ray tasks on an existing Ray cluster (e.g. 10.0.0.1:6379, or auto); "
        "results are written here, on the driver",
    )
    p.add_argument("--fresh-ray", action="store_true", help="start Ray for every cell (Flower's default)")
    p.add_argument("--fresh-actors", action="store_true", help="new client actors for every cell")
    p.add_argument(
        "--worker-niceness",
        type=int,
        default=0,
        help="nice value of Ray's client actors (default 0; -1 keeps Ray's default of 15)",
    )
    p.add_argument("--num-cpus", type=int, help="CPUs given to Ray (default: all)")
    p.add_argument("--cpus-per-client", type=float, help="CPUs per client actor (default 1)")
    p.add_argument("--verbose", action="store_true", help="Flower's logs and the app's output")
    p.set_defaults(func=cmd_sweep)

    for name, func, text in (
        ("plot", cmd_plot, "draw PNG curves and worst-case heatmaps (rule x f, rule x α per β)"),
        ("report", cmd_report, "print the Markdown table"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("target", nargs="+",
                       help="results folder (results/<sweep>) or the sweep's TOML file; several: together")
        p.add_argument("--results", help="results root when TARGET is a TOML file")
        if name == "plot":
            p.add_argument("--out", help="output folder (default: <results folder>/plots)")
        p.add_argument("--where", nargs="*", action="extend", metavar="KEY=VALUE",
                       help="only cells with these values, e.g. attack=alie"
                       + ("" if name == "plot" else " (printed only: report.md is not written)"))
        p.set_defaults(func=func)

    p = sub.add_parser("export", help="write a sweep's compact CSVs (config.json, cells.csv, rounds.csv)")
    p.add_argument("target", help="results folder (results/<sweep>) or the sweep's TOML file")
    p.add_argument("--out", required=True, help="folder for the three files (e.g. a folder to commit)")
    p.add_argument("--results", help="results root when TARGET is a TOML file")
    p.add_argument("--every", type=int, default=5, help="keep every N-th round besides 1..10 and eval rounds")
    p.add_argument("--force", action="store_true",
                   help="replace an export in --out that this one would change or lose cells of")
    p.add_argument("--merge", action="store_true",
                   help="keep the cells of the export in --out and add these (a sweep continued elsewhere, "
                   "sweep --skip-exported)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("progress", help="cells of a sweep finished so far, per rule and seed (Markdown)")
    p.add_argument("file", help="the sweep's experiment file, e.g. simulations/lab_mnist.toml")
    p.add_argument("--from", dest="source",
                   help="results folder or export (default: the file's results folder)")
    p.add_argument("--results", help="results root when --from is not given")
    p.set_defaults(func=cmd_progress)

    p = sub.add_parser("tables", help="regenerate the `<!-- resam ... -->` tables of a Markdown document")
    p.add_argument("file", help="the document, e.g. REPRODUCTION.md (block paths are relative to it)")
    p.add_argument("--check", action="store_true",
                   help="rewrite nothing; exit 1 with a diff if a table is stale")
    p.set_defaults(func=cmd_tables)

    p = sub.add_parser("claims", help="RESAM's claims with 95%% CIs over seeds (Markdown table)")
    p.add_argument("target", nargs="+",
                   help="results folder, exported folder, or the sweep's TOML file; several: together")
    p.add_argument("--results", help="results root when TARGET is a TOML file")
    p.add_argument("--near", type=float, default=5.0, help="claim 1's bound, in points (default 5)")
    p.add_argument("--fail", type=float, default=10.0, help="claim 2's bound, in points (default 10)")
    p.add_argument("--where", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="only cells with these values")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--wide", action="store_true", help="one row per rule, one column per claim")
    form.add_argument("--summary", action="store_true",
                      help="one bullet per claim: seeds on the claim's side, the rules of each verdict")
    p.set_defaults(func=cmd_claims)

    p = sub.add_parser("kappa", help="empirical κ of rules by adversarial search, next to the proven κ")
    p.add_argument("--n", type=int, default=7)
    p.add_argument("--f", type=int, default=2)
    p.add_argument("--d", type=int, default=2)
    p.add_argument(
        "--rules",
        nargs="+",
        default=[DEFAULT_KAPPA_RULES],
        help=f"comma-separated specs (';' if a spec has commas); default {DEFAULT_KAPPA_RULES}",
    )
    p.add_argument("--restarts", type=int, default=6)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-bound-input", action="store_true", help="do not seed the search with the f/(n-f) input"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_kappa)

    p = sub.add_parser("demo", help="the short MNIST sweep of `make run` (table + plot)")
    p.add_argument("--results", default="results", help="results root (default: results)")
    p.add_argument("--fresh", action="store_true", help="rerun even if the demo's cells are finished")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``resam`` (and ``python -m resam_flower.cli``)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:
        print(f"resam {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
