"""``pip install resam-flower`` suits an edge device: flwr, torch and numpy, and the mods and strategy work
with nothing else; simulation, experiments and dev tools are extras."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("ray", "matplotlib", "tqdm", "flwr_datasets", "datasets", "sklearn", "byzfl", "hypothesis")


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=~! ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_core_install_is_flower_torch_and_numpy():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert _names(project["dependencies"]) == {"flwr", "torch", "numpy"}
    extras = project["optional-dependencies"]
    assert _names(extras["app"]) == {"flwr-datasets"}
    assert {"flwr", "tqdm", "matplotlib", "resam-flower"} <= _names(extras["simulation"])
    assert "resam-flower[simulation]" in extras["dev"]  # make setup installs everything


def test_a_device_without_the_extras_runs_the_mods_and_the_strategy():
    """Imports with every heavy package made unimportable, then one RESAM round with momentum_mod."""
    code = textwrap.dedent(
        f"""
        import importlib.abc, sys
        BLOCKED = {HEAVY!r}

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is not installed on this device")

        sys.meta_path.insert(0, Block())
        import numpy as np
        from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
        from flwr.supercore.task_identity import TaskIdentity
        import resam_flower.app.client_app  # the default app's ClientApp imports on a device
        from resam_flower.clients import byzantine_mod, momentum_mod
        from resam_flower.strategies import ResilientAveraging

        TaskIdentity.run_id = TaskIdentity.task_id = 1
        TaskIdentity.node_id = 0

        class Grid:
            def get_node_ids(self):
                return [1, 2, 3]

        s = ResilientAveraging("cwtm", num_byzantine=1, lr=1.0, min_train_nodes=3, min_available_nodes=3)
        theta = ArrayRecord({{"w": Array(np.zeros(2, np.float32))}})
        msgs = list(s.configure_train(1, theta, ConfigRecord({{"lr": 0.1}}), Grid()))
        mod = momentum_mod(0.0)
        replies = []
        for i, msg in enumerate(msgs):
            ctxt = Context(run_id=1, node_id=i + 1, node_config={{}}, state=RecordDict(), run_config={{}})

            def app(m, c, g=float(i)):
                rec = ArrayRecord({{"w": Array(np.full(2, g, np.float32))}})
                content = RecordDict({{"arrays": rec, "metrics": MetricRecord({{"resam-gradient": 1}})}})
                return Message(content, reply_to=m)

            replies.append(byzantine_mod(msg, ctxt, lambda m, c: mod(m, c, app)))
        out, _ = s.aggregate_train(1, replies)
        print(out["w"].numpy().tolist(), sorted(m for m in BLOCKED if m in sys.modules))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    # gradients 0, 1, 2 -> trimmed mean (f = 1) is 1 -> theta - 1.0 * 1
    assert done.stdout.split("]", 1)[0] + "]" == "[-1.0, -1.0]", done.stdout
    assert done.stdout.strip().endswith("[]"), done.stdout
