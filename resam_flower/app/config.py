"""The run configuration of the default app: every knob, its default, and its validation.

Keys are kebab-case, as in Flower's templates and ``[tool.flwr.app.config]``; they can be overridden with
``flwr run . --run-config "key=value ..."``. :meth:`ExperimentConfig.from_run_config` checks every value and
fails at start with a message naming the key, the value and the bound.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .._params import parse_kwargs
from ..aggregators import build as build_rule
from ..aggregators.base import check_float, check_int

__all__ = [
    "ExperimentConfig",
    "parse_params",
    "check_run_config_key",
    "MESSAGE_PREFIX",
    "WEIGHT_DECAY_AT",
    "DATA_SPLITS",
    "EXTRA_KEYS",
]

#: Prefix of the experiment's keys inside train/evaluate ConfigRecords.
MESSAGE_PREFIX = "exp-"
#: Where weight decay acts: the server step ``θ - γ(R + λθ)`` (ByzFL) or each worker's gradient ``g + λθ``
#: (L2 in the workers' loss, before momentum, clipping and the rule: the authors' lab's scripts).
WEIGHT_DECAY_AT = ("server", "worker")
#: Who holds the training data: every node (Byzantine ones included), or the honest nodes only (ByzFL and the
#: authors' lab: ``n - f`` partitions; the simulated server assigns them, see ``app.task.data_assignment``).
DATA_SPLITS = ("all", "honest")
#: Run-config keys the app reads besides the fields of :class:`ExperimentConfig` (kept in its ``extra``): the
#: partitioners' parameters; ``data-<option>`` keys (any option) go to the data set's loader.
EXTRA_KEYS = ("classes-per-partition", "gamma")


def parse_params(text: str) -> dict[str, Any]:
    """``"z=1.5, target='max-variance'"`` -> ``{"z": 1.5, "target": "max-variance"}`` (empty string -> {})."""
    shown = (text or "").strip()
    return parse_kwargs(text, error=f"cannot parse parameters {shown!r}: use key=value, key2=value2")


def check_run_config_key(key: str, where: str) -> None:
    """Raise :class:`ValueError` if ``key`` is no run-config key the app reads (a typo would be ignored).

    Known: the fields of :class:`ExperimentConfig` (kebab-case), :data:`EXTRA_KEYS` and ``data-<option>``.
    The message names ``where`` the key was found and the closest known keys.
    """
    import difflib

    known = [f.name.replace("_", "-") for f in dataclasses.fields(ExperimentConfig) if f.name != "extra"]
    known += list(EXTRA_KEYS)
    if key in known or (key.startswith("data-") and len(key) > len("data-")):
        return
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(map(repr, close))}?" if close else f"known keys: {', '.join(known)}"
    raise ValueError(f"{where}: {key!r} is no run-config key; {hint}")


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: data, model, federation, RESAM server and workers, adversary, outputs."""

    num_server_rounds: int = 200
    num_clients: int = 13
    num_byzantine: int = 3
    attack: str = "alie"
    attack_params: str = ""
    aggregator: str = "nnm+cwtm"
    aggregator_params: str = ""
    mode: str = "gradient"
    momentum: float = 0.9
    lr: float = 0.1
    lr_schedule: str = "constant"
    lr_step_size: int = 100
    lr_gamma: float = 0.1
    lr_decay: float = 100.0
    weight_decay: float = 1e-4
    weight_decay_at: str = "server"
    worker_clip: float = 0.0
    max_update_norm: float = 0.0
    batch_size: int = 32
    local_steps: int = 1
    local_lr: float = 0.0
    dataset: str = "mnist"
    partitioner: str = "iid"
    data_split: str = "all"
    alpha: float = 1.0
    model: str = "mnist-cnn"
    seed: int = 0
    fraction_train: float = 1.0
    fraction_evaluate: float = 0.0
    eval_every: int = 10
    num_test: int = 0
    device: str = "cpu"
    results_dir: str = "results"
    run_name: str = ""
    checkpoint_every: int = 0
    resume: bool = False
    round_timeout: float = 600.0
    node_stall_timeout: float = 30.0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_run_config(cls, run_config: dict[str, Any], *, validate: bool = True) -> ExperimentConfig:
        """Build and validate from Flower's run config (kebab-case keys; unknown keys kept in ``extra``).

        Types are always checked; ``validate=False`` skips :meth:`validate` (bounds, the rule, the attack):
        what a worker does with the config the server already validated.
        """
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in dict(run_config).items():
            name = key.replace("-", "_")
            (values if name in names else extra)[name if name in names else key] = value
        defaults = cls()
        for name, value in list(values.items()):
            want = type(getattr(defaults, name))
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                values[name] = float(value)
            elif want is int and isinstance(value, float) and value.is_integer():
                values[name] = int(value)
            elif not isinstance(value, want) or isinstance(value, bool) and want is not bool:
                raise ValueError(
                    f"run config {name.replace('_', '-')} must be {want.__name__}, got {value!r}"
                )
        cfg = cls(**values, extra=extra)
        if validate:
            cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise :class:`ValueError` naming the key and the bound for any bad value."""
        check_int("num-server-rounds", self.num_server_rounds, low=1)
        check_int("num-clients", self.num_clients, low=1)
        check_int("num-byzantine", self.num_byzantine, low=0, high=self.num_clients - 1)
        check_float("momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        check_float("lr", self.lr, low=0.0, low_open=True)
        check_float("weight-decay", self.weight_decay, low=0.0)
        for key, value, allowed in (
            ("weight-decay-at", self.weight_decay_at, WEIGHT_DECAY_AT),
            ("data-split", self.data_split, DATA_SPLITS),
        ):
            if value not in allowed:
                raise ValueError(f"run config {key} must be one of {', '.join(allowed)}, got {value!r}")
        check_float("worker-clip", self.worker_clip, low=0.0)
        check_float("max-update-norm", self.max_update_norm, low=0.0)
        check_int("batch-size", self.batch_size, low=1)
        check_int("local-steps", self.local_steps, low=1)
        check_float("local-lr", self.local_lr, low=0.0)
        check_float("alpha", self.alpha, low=0.0, low_open=True)
        check_float("fraction-train", self.fraction_train, low=0.0, high=1.0, low_open=True)
        check_float("fraction-evaluate", self.fraction_evaluate, low=0.0, high=1.0)
        check_int("eval-every", self.eval_every, low=1)
        check_int("num-test", self.num_test, low=0)
        check_int("seed", self.seed, low=0)
        check_int("checkpoint-every", self.checkpoint_every, low=0)
        check_float("round-timeout", self.round_timeout, low=0.0, low_open=True)
        check_float("node-stall-timeout", self.node_stall_timeout, low=0.0)
        try:
            from ..strategies.schedules import build_schedule

            build_schedule(self.lr, self.lr_schedule, **self.lr_schedule_params())
        except ValueError as exc:
            raise ValueError(f"run config lr-schedule={self.lr_schedule!r}: {exc}") from None
        if self.mode not in ("gradient", "model"):
            raise ValueError(f"run config mode must be gradient or model, got {self.mode!r}")
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            raise ValueError(f"run config device must be cpu, cuda, cuda:N or auto, got {self.device!r}")
        from ..data.sources import check_dataset
        from ..models.registry import check_model

        options = {k[len("data-") :]: v for k, v in self.extra.items() if k.startswith("data-")}
        check_dataset(self.dataset, options)  # unknown names and options fail here, not at the first load
        check_model(self.model)
        rule = build_rule(self.aggregator, f=self.num_byzantine, **parse_params(self.aggregator_params))
        need = rule.min_inputs(self.num_byzantine)
        if self.num_clients < need:
            raise ValueError(
                f"aggregator {rule.spec} needs {rule.requirement}: num-clients={self.num_clients} is too few "
                f"for num-byzantine={self.num_byzantine} (at least {need})"
            )
        sampled = max(int(self.num_clients * self.fraction_train), 1)  # what the app's strategy samples
        if sampled < need:
            least = math.ceil(need / self.num_clients * 1000) / 1000
            while int(self.num_clients * least) < need:  # floating point: the app's int(n * fraction)
                least += 0.001
            raise ValueError(
                f"aggregator {rule.spec} needs {rule.requirement}, i.e. {need} replies a round: "
                f"fraction-train={self.fraction_train} samples {sampled} of the {self.num_clients} clients "
                f"(fraction-train >= {least:.3f} samples at least {need})"
            )
        if self.num_byzantine and self.attack not in ("", "none"):
            from ..attacks import resolve

            attack = resolve(self.attack)  # unknown attack names fail here, at start
            if attack.needs_honest_data and (self.local_steps != 1 or self.mode != "gradient"):
                raise ValueError(
                    f"attack {attack.name} redraws the honest workers' mini-batch gradients: it needs "
                    f"local-steps = 1 and mode = gradient, got local-steps={self.local_steps}, "
                    f"mode={self.mode!r}"
                )
        parse_params(self.attack_params)

    def lr_schedule_params(self) -> dict[str, float]:
        """The parameters of the server's lr schedule (``lr-step-size``, ``lr-gamma``, ``lr-decay``; with
        ``lr-schedule = "debiased"`` also ``beta``: the run's ``momentum``, the workers')."""
        params = {"step_size": self.lr_step_size, "gamma": self.lr_gamma, "decay": self.lr_decay}
        if self.lr_schedule == "debiased":
            params["beta"] = self.momentum
        return params

    # ------------------------------------------------------------------------------------------
    @property
    def attacked(self) -> bool:
        """Whether a simulated adversary runs (some Byzantine nodes and an attack)."""
        return self.num_byzantine > 0 and self.attack not in ("", "none")

    @property
    def server_weight_decay(self) -> float:
        """λ of the server step: ``weight-decay`` in gradient mode with ``weight-decay-at = "server"``, else 0
        (the workers add it to their gradients, or, in model mode, the server applies trained weights)."""
        return self.weight_decay if self.mode == "gradient" and self.weight_decay_at == "server" else 0.0

    @property
    def worker_weight_decay(self) -> float:
        """λ the workers add to their gradients (``weight-decay-at = "worker"``), else 0."""
        return self.weight_decay if self.weight_decay_at == "worker" else 0.0

    @property
    def num_data_partitions(self) -> int:
        """Partitions of the training data: ``num-clients``, or with ``data-split = "honest"`` and an attack,
        the ``num-clients - num-byzantine`` honest nodes (without an attack every node is honest)."""
        if self.data_split == "honest" and self.attacked:
            return self.num_clients - self.num_byzantine
        return self.num_clients

    def name(self) -> str:
        """Run name: ``run_name`` or one derived from the main knobs."""
        if self.run_name:
            return self.run_name
        attack = self.attack if self.attacked else "none"
        return (
            f"{self.dataset}-{self.aggregator.replace('+', '_')}-{attack}-f{self.num_byzantine}"
            f"-b{self.momentum:g}-s{self.seed}"
        )

    def to_config_record(self) -> dict[str, Any]:
        """Flat ``exp-<key>`` entries for a train/evaluate ConfigRecord: the server tells the workers the run.

        Workers read their settings from the message first (:meth:`from_message`), so a SuperNode or a Python
        simulation needs no run config of its own, and server and workers cannot disagree.
        """
        return {
            f"{MESSAGE_PREFIX}{k}": v
            for k, v in self.to_dict().items()
            if isinstance(v, (str, int, float, bool))
        }

    @classmethod
    def from_message(cls, config: Any, run_config: dict[str, Any] | None = None) -> ExperimentConfig:
        """The experiment from a message's ConfigRecord (``exp-`` keys) over the node's run config.

        Not validated again: the server validated the run config once, at start (a worker only reads the
        fields it uses; their types are still checked).
        """
        merged = dict(run_config or {})
        merged.update(
            {k[len(MESSAGE_PREFIX) :]: v for k, v in dict(config).items() if k.startswith(MESSAGE_PREFIX)}
        )
        return cls.from_run_config(merged, validate=False)

    def to_dict(self) -> dict[str, Any]:
        """Kebab-case dict (what ``summary.json`` stores as the full config)."""
        out = {
            f.name.replace("_", "-"): getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "extra"
        }
        out.update(self.extra)
        return out
