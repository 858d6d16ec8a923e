"""The loopback federation's exit status: 0 only if this run wrote its summary.json with status "ok".

``flwr run`` exits 0 when the run failed, so :func:`run_summary` decides from the summary the run wrote; a
summary an earlier run left in a reused ``--workdir`` does not count. No Flower process is started here.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from resam_flower.deploy import loopback
from resam_flower.deploy.loopback import LoopbackFederation, run_summary, summary_files, summary_target


def _write(path, status="ok"):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"status": status, "rounds": 3}))
    os.replace(tmp, path)  # as the app writes it: a new file renamed over the old one


def test_this_runs_ok_summary_is_returned(tmp_path):
    before = summary_files(tmp_path, "loopback")
    assert before == {}
    _write(tmp_path / "loopback" / "summary.json")
    assert run_summary(before, tmp_path, "loopback") == tmp_path / "loopback" / "summary.json"


def test_a_failed_status_exits_nonzero_naming_the_status_and_the_path(tmp_path):
    before = summary_files(tmp_path, "loopback")
    _write(tmp_path / "loopback" / "summary.json", "failed: no round made progress")
    path = tmp_path / "loopback" / "summary.json"
    with pytest.raises(
        SystemExit,
        match=rf"status 'failed: no round made progress'.* in {re.escape(str(path))}; see the logs",
    ):
        run_summary(before, tmp_path, "loopback", 0, tmp_path / "logs")
    path.write_text('{"rounds": 3}')  # no status at all
    with pytest.raises(SystemExit, match=rf"status None .*{re.escape(str(path))}"):
        run_summary(before, tmp_path, "loopback")
    path.write_text("{not json")
    with pytest.raises(SystemExit, match=rf"summary {re.escape(str(path))} cannot be read"):
        run_summary(before, tmp_path, "loopback")


def test_no_summary_or_an_earlier_runs_summary_exits_nonzero(tmp_path):
    path = tmp_path / "loopback" / "summary.json"
    with pytest.raises(SystemExit, match=rf"wrote no summary at {re.escape(str(path))}; see the logs in"):
        run_summary(summary_files(tmp_path, "loopback"), tmp_path, "loopback", 0, tmp_path / "logs")
    _write(path)  # an earlier run's, in a reused --workdir
    before = summary_files(tmp_path, "loopback")
    with pytest.raises(
        SystemExit, match=rf"wrote no summary at {re.escape(str(path))} \(the one there is an earlier run's\)"
    ):
        run_summary(before, tmp_path, "loopback")
    _write(path)  # this run's, replacing it
    assert run_summary(before, tmp_path, "loopback") == path


def test_a_nonzero_flwr_run_exit_fails_even_with_an_ok_summary(tmp_path):
    before = summary_files(tmp_path, "loopback")
    with pytest.raises(
        SystemExit, match=r"the run failed \(flwr run exited with code 1\): it wrote no summary"
    ):
        run_summary(before, tmp_path, "loopback", 1)
    _write(tmp_path / "loopback" / "summary.json")
    with pytest.raises(SystemExit, match=r"exited with code 2\) although its summary .* says status 'ok'"):
        run_summary(before, tmp_path, "loopback", 2)


def test_a_derived_run_name_finds_the_summary_this_run_wrote(tmp_path):
    _write(tmp_path / "digits-cwtm-none-f1-b0.9-s0" / "summary.json")  # an earlier run
    before = summary_files(tmp_path, "")
    _write(tmp_path / "digits-nnm_cwtm-none-f1-b0.9-s0" / "summary.json", "failed: boom")
    with pytest.raises(SystemExit, match=r"status 'failed: boom' .*digits-nnm_cwtm"):
        run_summary(before, tmp_path, "")
    with pytest.raises(SystemExit, match=r"wrote no summary at .*<run-name>/summary.json \(the one there"):
        run_summary(summary_files(tmp_path, ""), tmp_path, "")


def test_the_users_results_dir_and_run_name_override_the_defaults(tmp_path):
    defaults = f"num-server-rounds=5 results-dir='{tmp_path / 'results'}' run-name='loopback'"
    assert summary_target([defaults, ""], tmp_path) == (tmp_path / "results", "loopback")
    assert summary_target([defaults, "run-name='mine' lr=0.5"], tmp_path) == (tmp_path / "results", "mine")
    cwd = tmp_path / "superexec"  # a relative results-dir is the ServerApp's (the SuperExec's) cwd's
    assert summary_target([defaults, "results-dir='out' run-name=''"], cwd) == (cwd / "out", "")
    with pytest.raises(SystemExit, match=r"--run-config .*lr=0.5 lr=1.*invalid format"):
        summary_target([defaults, "lr=0.5 lr=1"], tmp_path)


def test_flwr_run_passes_the_users_run_config_after_the_defaults(tmp_path, monkeypatch):
    started = []
    with LoopbackFederation(tmp_path, num_keys=1) as fed:
        monkeypatch.setattr(fed.procs, "start", lambda name, cmd, **kw: started.append(cmd))
        fed.flwr_run(tmp_path, "run-name='loopback'", "run-name='mine'", "")
    (cmd,) = started
    assert cmd[cmd.index("--stream") + 1 :] == [
        "--run-config", "run-name='loopback'", "--run-config", "run-name='mine'",
    ]  # fmt: skip


def test_a_reused_workdir_gets_fresh_credentials(tmp_path):
    with LoopbackFederation(tmp_path, num_keys=1) as first:
        key = first.creds.node_public_keys[0].read_bytes()
    with LoopbackFederation(tmp_path, num_keys=1) as second:  # the same --workdir: no FileExistsError
        assert second.creds.node_public_keys[0].read_bytes() != key


@pytest.mark.parametrize("writes", [None, "ok", "failed: no progress"])
def test_main_exits_by_the_summary_this_run_wrote(tmp_path, monkeypatch, capsys, writes):
    """main() with the processes faked: an earlier run's ok summary in the reused --workdir does not count."""
    summary = tmp_path / "results" / "mine" / "summary.json"  # the user's run-name
    _write(summary)  # left by an earlier run

    class Fed:
        def __init__(self, workdir, nodes, proxy=True):
            self.creds = type("Creds", (), {"node_public_keys": (), "node_private_keys": ()})()
            self.procs = type("Procs", (), {"log_dir": tmp_path / "logs"})()
            self.procs.log_dir.mkdir(exist_ok=True)
            (self.procs.log_dir / "flwr-run.log").write_text("")
            self.address = self.fleet_address = "127.0.0.1:1"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def start_superlink(self):
            pass

        def register(self, keys):
            pass

        def flwr_run(self, app, *configs):
            if writes is not None:
                _write(summary, writes)
            return type("Run", (), {"returncode": 0, "poll": lambda self: 0})()  # as flwr run: 0 anyway

    monkeypatch.setattr(loopback, "LoopbackFederation", Fed)
    argv = ["--nodes", "2", "--workdir", str(tmp_path), "--run-config", "run-name='mine'"]
    if writes == "ok":
        loopback.main(argv)
        assert f"summary: {summary}" in capsys.readouterr().out
        return
    why = r"wrote no summary at .* \(the one there is an earlier" if writes is None else "status 'failed"
    with pytest.raises(SystemExit, match=rf"{why}.*see the logs in {re.escape(str(tmp_path / 'logs'))}"):
        loopback.main(argv)
