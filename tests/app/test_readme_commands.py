"""README's ``flwr run`` command, run exactly as written, from a shell where the venv is not activated."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from resam_flower.deploy.processes import free_port

REPO = Path(__file__).resolve().parents[2]


def readme_block(containing: str) -> str:
    """The README's bash block that contains ``containing``."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    found = [b for b in blocks if containing in b]
    assert len(found) == 1, f"expected one README bash block with {containing!r}, found {len(found)}"
    return found[0]


@pytest.mark.slow
def test_the_readme_flwr_run_command_works_verbatim_without_an_activated_venv(tmp_path):
    command = readme_block("flwr run . --stream")
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p and Path(p) != Path(venv_bin))
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update(
        PATH=path,
        FLWR_HOME=str(tmp_path / "flwr-home"),  # never the developer's ~/.flwr
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
        FLWR_LOCAL_CONTROL_API_PORT=str(free_port()),
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_TELEMETRY_ENABLED="0",
    )
    assert shutil.which("flwr", path=path) is None or "flwr" not in venv_bin
    run_dir = REPO / "results" / "readme-flwr-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        proc = subprocess.run(
            ["bash", "-ec", command], cwd=REPO, env=env, capture_output=True, text=True, timeout=480
        )
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-3000:]
        assert "Unable to launch" not in log, log[-3000:]
        summary = json.loads((run_dir / "summary.json").read_text())
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        subprocess.run(["pkill", "-f", f"flower-superlink.*{env['FLWR_HOME']}"], check=False)
    assert summary["rounds"] == 20 and summary["skipped_rounds"] == 0 and summary["status"] == "ok"
    # 10 digits: chance is 0.1; this exact run gives 0.727 (in-process engine, bit-identical to Ray, seed 0)
    assert summary["final_test_accuracy"] > 0.5, summary


def test_the_readme_kappa_command_works_verbatim_without_an_activated_venv():
    lines = readme_block(".venv/bin/resam kappa").splitlines()
    command = next(ln for ln in lines if ln.startswith(".venv/bin/resam kappa")).split("#", 1)[0].strip()
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    venv_bin = Path(sys.executable).parent
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p and Path(p) != venv_bin)
    proc = subprocess.run(
        ["bash", "-ec", command], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for rule in ("mean", "mda", "cwtm"):
        assert rule in proc.stdout, proc.stdout
