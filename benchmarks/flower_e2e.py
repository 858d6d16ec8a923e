"""End-to-end benchmark: RESAM on Flower's Ray simulation vs ByzFL's own loop, and vs plain FedAvg.

Four measurements, each printed as a Markdown row and saved as JSON (``--json``):

1. ``byzfl`` / ``resam``: the MNIST configuration of ByzFL's benchmark — CNN conv20-conv50-fc500-fc10
   (431,080 params),
   10 honest + 3 Byzantine sending ALIE vectors (z = 1.5), NNM + trimmed mean (f = 3), β = 0.9, batch 32,
   SGD lr 0.1, weight decay 1e-4, IID, 300 steps — once through ByzFL 0.0.11's own framework
   (``byzfl.Client``/``Server``/``ByzantineClient`` in one process) and once through Flower's Ray
   simulation with ResilientAveraging + momentum_mod. Wall time (ours includes Ray's start) and test accuracy.
2. ``overhead``: ResilientAveraging + momentum_mod (gradient mode) vs Flower's own FedAvg on the same app
   (FedAvg-style clients: one local SGD step, weights replied), same clients/rounds/data: wall-time ratio.
3. ``floor``: Flower's own engine with FedAvg and clients that echo a 3 KB model, same clients and rounds:
   the part of the wall time that no app on this engine can remove.
4. ``memory``: peak resident memory of the Ray worker processes and of the driver, per virtual client.

Usage::

    .venv/bin/python benchmarks/flower_e2e.py byzfl resam --rounds 300
    .venv/bin/python benchmarks/flower_e2e.py overhead --rounds 60
    .venv/bin/python benchmarks/flower_e2e.py floor --rounds 300   # the engine alone (echo clients)
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ANCHOR = {
    "dataset": "mnist",
    "model": "mnist-cnn",
    "num-clients": 13,
    "num-byzantine": 3,
    "attack": "alie",
    "attack-params": "z=1.5",
    "aggregator": "nnm+cwtm",
    "momentum": 0.9,
    "lr": 0.1,
    "weight-decay": 1e-4,
    "batch-size": 32,
    "partitioner": "iid",
    "eval-every": 1000,
    "seed": 0,
}


def run_byzfl(rounds: int, beta: float = 0.9, seed: int = 0) -> dict:
    """ByzFL 0.0.11's own training loop on that MNIST configuration (one process)."""
    from byzfl import ByzantineClient, Client, Server
    from torch.utils.data import DataLoader, TensorDataset

    from resam_flower.data import load_dataset

    torch.manual_seed(seed)
    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    t0 = time.perf_counter()
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    shards = perm.chunk(10)
    clients = [
        Client(
            {
                "model_name": "cnn_mnist",
                "device": "cpu",
                "loss_name": "NLLLoss",
                "LabelFlipping": False,
                "nb_labels": 10,
                "momentum": beta,
                "store_per_client_metrics": False,
                "training_dataloader": DataLoader(
                    TensorDataset(train.images[s], train.labels[s]), batch_size=32, shuffle=True
                ),
            }
        )
        for s in shards
    ]
    server = Server(
        {
            "device": "cpu",
            "model_name": "cnn_mnist",
            "optimizer_name": "SGD",
            "learning_rate": 0.1,
            "weight_decay": 1e-4,
            "milestones": [],
            "learning_rate_decay": 1.0,
            "aggregator_info": {"name": "TrMean", "parameters": {"f": 3}},
            "pre_agg_list": [{"name": "NNM", "parameters": {"f": 3}}],
            "test_loader": DataLoader(TensorDataset(test.images, test.labels), batch_size=1000),
        }
    )
    byz = ByzantineClient({"name": "ALittleIsEnough", "f": 3, "parameters": {"tau": 1.5}})
    for c in clients:
        c.set_model_state(server.get_dict_parameters())
    initial = float(server.compute_test_accuracy())  # ours evaluates round 0 too: the same work
    steps = []
    for _ in range(rounds):
        t_step = time.perf_counter()
        honest = []
        for c in clients:
            c.compute_gradients()
            honest.append(c.get_flat_gradients_with_momentum().clone())
        vectors = honest + byz.apply_attack(honest)
        server.update_model_with_gradients(vectors)
        state = server.get_dict_parameters()
        for c in clients:
            c.set_model_state(state)
        steps.append(time.perf_counter() - t_step)
    accuracy = float(server.compute_test_accuracy())
    wall = time.perf_counter() - t0
    return {
        "system": "ByzFL 0.0.11 loop",
        "rounds": rounds,
        "wall_time_s": wall,
        "round_median_s": statistics.median(steps),
        "initial_accuracy": initial,
        "test_accuracy": accuracy,
    }


def run_resam(rounds: int, beta: float = 0.9) -> dict:
    """The same experiment through Flower's Ray simulation (ResilientAveraging + momentum_mod)."""
    from resam_flower.simulation import simulate

    t0 = time.perf_counter()
    s = simulate(
        {
            **ANCHOR,
            "momentum": beta,
            "num-server-rounds": rounds,
            "results-dir": "results/bench",
            "run-name": f"e2e-resam-b{beta:g}",
        }
    )
    wall = time.perf_counter() - t0
    rows = list(csv.DictReader((Path("results/bench") / f"e2e-resam-b{beta:g}" / "metrics.csv").open()))
    times = [float(r["round-time-s"]) for r in rows if r.get("round-time-s")]
    return {
        "system": "resam-flower on Flower/Ray",
        "rounds": rounds,
        "wall_time_s": wall,
        "strategy_time_s": s["wall_time_s"],
        "first_round_s": times[0] if times else None,
        "round_median_s": statistics.median(times[1:] or times) if times else None,
        "aggregate_median_s": statistics.median(float(r["aggregate-time-s"]) for r in rows),
        "test_accuracy": s["final_test_accuracy"],
    }


def run_floor(rounds: int, clients: int = ANCHOR["num-clients"]) -> dict:
    """Flower's own floor: FedAvg and a ClientApp that echoes a 3 KB model, same engine, clients and rounds.

    What no app on this engine can go below: Ray's start and the per-round cost of the simulation
    engine's message passing (its polling threads, one Ray actor call per message).
    """
    import numpy as np
    from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from resam_flower.simulation import backend_config, poll_faster

    client = ClientApp()

    @client.train()
    def _echo(msg: Message, ctxt: Context) -> Message:
        content = RecordDict({"arrays": msg.content["arrays"], "metrics": MetricRecord({"num-examples": 1})})
        return Message(content, reply_to=msg)

    stamps: list[float] = []
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        poll_faster(grid)  # as simulate() does
        strategy = FedAvg(fraction_evaluate=0.0, min_available_nodes=clients, min_train_nodes=clients)
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord({"w": Array(np.zeros(750, np.float32))}),
            num_rounds=rounds,
            evaluate_fn=lambda rnd, arrays: stamps.append(time.perf_counter()),
        )

    logging.getLogger("flwr").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_simulation(server, client, num_supernodes=clients, backend_config=backend_config())
    return {
        "system": "Flower floor (FedAvg, echo client, 3 KB)",
        "rounds": rounds,
        "wall_time_s": time.perf_counter() - t0,
        **round_times(stamps),
    }


def round_times(stamps: list[float]) -> dict[str, float]:
    """First round and median of the others, from the times ``evaluate_fn`` was called (round 0, 1, ...)."""
    per_round = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return {"first_round_s": per_round[0], "round_median_s": statistics.median(per_round[1:] or per_round)}


def _round_numbered_fedavg() -> type:
    """Flower's FedAvg that also sends the round number the default app's worker draws its mini-batch with."""
    from flwr.app import ConfigRecord
    from flwr.serverapp.strategy import FedAvg

    from resam_flower import protocol as P

    class RoundNumberedFedAvg(FedAvg):
        def configure_train(self, server_round, arrays, config, grid):  # noqa: ANN001 - FedAvg's signature
            return super().configure_train(
                server_round, arrays, ConfigRecord({**dict(config), P.SERVER_ROUND: server_round}), grid
            )

    return RoundNumberedFedAvg


def run_overhead(rounds: int) -> dict:
    """ResilientAveraging + momentum_mod vs Flower's FedAvg on the same app, same data, same rounds."""
    from flwr.app import ArrayRecord, ConfigRecord, Context
    from flwr.serverapp import Grid, ServerApp

    _RoundNumberedFedAvg = _round_numbered_fedavg()  # noqa: N806 - a class
    from flwr.simulation import run_simulation

    from resam_flower.app.config import ExperimentConfig
    from resam_flower.app.server_app import build_strategy
    from resam_flower.app.task import model_for, prepare_partitions, test_split
    from resam_flower.app.worker import make_client_app
    from resam_flower.simulation import backend_config, poll_faster

    base = {**ANCHOR, "num-byzantine": 0, "attack": "none", "aggregator": "mean", "num-server-rounds": rounds}
    prepare_partitions(ExperimentConfig.from_run_config(base))  # as simulate() does: actors read the split
    logging.getLogger("flwr").setLevel(logging.WARNING)
    out: dict[str, dict[str, float]] = {}
    for name in ("fedavg", "resam"):
        cfg = ExperimentConfig.from_run_config({**base, "mode": "model" if name == "fedavg" else "gradient"})
        times: dict[str, float] = {}
        app = ServerApp()

        @app.main()
        def _main(grid: Grid, context: Context, cfg=cfg, name=name, times=times) -> None:
            poll_faster(grid)  # the same engine settings for both
            stamps: list[float] = []
            test = test_split(cfg)
            model = model_for(cfg, test.num_classes, test.in_shape, fresh=True)
            if name == "fedavg":
                strategy = _RoundNumberedFedAvg(
                    fraction_evaluate=0.0,
                    min_available_nodes=cfg.num_clients,
                    min_train_nodes=cfg.num_clients,
                )
            else:
                strategy = build_strategy(cfg)
            t0 = time.perf_counter()
            strategy.start(
                grid=grid,
                initial_arrays=ArrayRecord(model.state_dict()),
                num_rounds=rounds,
                train_config=ConfigRecord(cfg.to_config_record()),
                evaluate_fn=lambda rnd, arrays: stamps.append(time.perf_counter()),
            )
            times["rounds_s"] = time.perf_counter() - t0
            times.update(round_times(stamps))

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_simulation(
                app, make_client_app(), num_supernodes=cfg.num_clients, backend_config=backend_config()
            )
        out[name] = times
    return {
        "fedavg_s": out["fedavg"]["rounds_s"],
        "resam_s": out["resam"]["rounds_s"],
        "ratio": out["resam"]["rounds_s"] / out["fedavg"]["rounds_s"],
        "fedavg_round_median_s": out["fedavg"]["round_median_s"],
        "resam_round_median_s": out["resam"]["round_median_s"],
        "round_ratio": out["resam"]["round_median_s"] / out["fedavg"]["round_median_s"],
        "first_round_s": {k: v["first_round_s"] for k, v in out.items()},
        "rounds": rounds,
        "clients": base["num-clients"],
    }


def peak_memory() -> dict:
    """Peak RSS (MiB) of this process and of its finished children (the Ray workers)."""
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"driver_peak_mib": me, "largest_child_peak_mib": kids}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", nargs="+", choices=["byzfl", "resam", "floor", "overhead", "memory"])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--beta", type=float, default=0.9)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = {}
    for what in args.what:
        if what == "byzfl":
            results[what] = run_byzfl(args.rounds, args.beta)
        elif what == "resam":
            results[what] = run_resam(args.rounds, args.beta)
        elif what == "floor":
            results[what] = run_floor(args.rounds)
        elif what == "overhead":
            results[what] = run_overhead(args.rounds)
        print(json.dumps({what: results.get(what)}), flush=True)
    results["memory"] = peak_memory()
    if "byzfl" in results:
        b = results["byzfl"]
        print("| system | wall time | vs ByzFL | first round | median round | test accuracy |")
        print("|---|---|---|---|---|---|")
        for key in ("byzfl", "resam", "floor"):
            r = results.get(key)
            if r is None:
                continue
            first = f"{r['first_round_s']:.2f} s" if r.get("first_round_s") is not None else "—"
            acc = f"{100 * r['test_accuracy']:.2f} %" if "test_accuracy" in r else "—"
            print(
                f"| {r['system']} | {r['wall_time_s']:.1f} s | {r['wall_time_s'] / b['wall_time_s']:.2f}x "
                f"| {first} | {r['round_median_s']:.3f} s | {acc} |"
            )
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
