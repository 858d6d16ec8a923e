"""What resam_flower.compat assumes of Flower: each assumption checked, so a Flower release that changes
it fails here, by name, instead of silently changing a run."""

from __future__ import annotations

import inspect
import random

import flwr
import pytest
from packaging.version import Version

from resam_flower import compat


def test_flower_is_a_tested_release():
    assert Version("1.42") <= Version(flwr.__version__) < Version("1.43"), flwr.__version__


def test_run_simulation_still_exists_with_the_arguments_we_pass():
    from flwr.simulation import run_simulation

    params = inspect.signature(run_simulation).parameters
    for name in ("server_app", "client_app", "num_supernodes", "backend_config", "verbose_logging"):
        assert name in params, name


def test_the_in_memory_grid_polls_with_a_float_pull_interval():
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    source = inspect.getsource(InMemoryGrid)
    assert "self.pull_interval" in source and "time.sleep(self.pull_interval)" in source

    class Stub:
        pull_interval = 0.1

    grid = Stub()
    compat.poll_faster(grid)  # type: ignore[arg-type]
    assert grid.pull_interval == compat.POLL_INTERVAL_S


def test_node_ids_are_drawn_where_we_seed_them():
    import flwr.server.superlink.linkstate.in_memory_linkstate as linkstate

    # Flower draws a node's id with this module-level function inside create_node: that is what we seed
    assert "generate_rand_int_from_bytes" in inspect.getsource(linkstate.InMemoryLinkState.create_node)
    original = linkstate.generate_rand_int_from_bytes, linkstate.InMemoryLinkState.create_node
    rng = random.Random("resam-flower/node-ids/3")
    with compat.stable_simulation_node_ids(3):
        assert linkstate.InMemoryLinkState.create_node is not original[1]
        compat._LOCAL.creating_node = True  # what the patched create_node sets around Flower's own
        try:
            assert [linkstate.generate_rand_int_from_bytes(8) for _ in range(2)] == [
                rng.getrandbits(64) for _ in range(2)
            ]
        finally:
            compat._LOCAL.creating_node = False
    assert (linkstate.generate_rand_int_from_bytes, linkstate.InMemoryLinkState.create_node) == original


def test_the_ray_backend_has_the_two_names_we_swap_and_the_pool_methods_we_override():
    from flwr.server.superlink.fleet.vce.backend import raybackend

    assert hasattr(raybackend, "ray") and hasattr(raybackend, "BasicActorPool")
    pool = raybackend.BasicActorPool
    for method in ("add_actors_to_pool", "terminate_all_actors"):
        assert callable(getattr(pool, method, None)), method
    init = inspect.getsource(pool.__init__)
    for attribute in ("self.pool", "self.num_actors", "self._future_to_actor"):
        assert attribute in init, attribute
    original = raybackend.ray, raybackend.BasicActorPool
    with compat.ray_backend_kept_alive():
        assert raybackend.ray is not original[0] and raybackend.BasicActorPool is not original[1]
        raybackend.ray.shutdown()  # deferred: does nothing
    assert (raybackend.ray, raybackend.BasicActorPool) == original


def test_this_process_is_not_a_simulation_worker():
    assert compat.in_simulation() is False


@pytest.mark.slow
def test_a_client_app_in_flowers_ray_simulation_knows_it_is_one_and_has_the_predicted_node_id():
    """Inside Flower's Ray simulation: in_simulation() is true, and node ``i`` (partition ``i``) has the id
    simulation_node_ids predicts (what the in-process engine uses to match Ray's sampling, bit for bit)."""
    import time

    from flwr.app import Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp

    from resam_flower.simulation import backend_config

    seen: dict[int, tuple[float, int]] = {}
    client = ClientApp()

    @client.query()
    def query(msg: Message, ctxt: Context) -> Message:
        out = {"sim": float(compat.in_simulation()), "pid": int(ctxt.node_config["partition-id"])}
        return Message(RecordDict({"m": MetricRecord(out)}), reply_to=msg)

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        deadline = time.monotonic() + 60
        while len(nodes := list(grid.get_node_ids())) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)  # a simulation's first listing can be empty
        msgs = [Message(RecordDict(), dst_node_id=node, message_type="query") for node in nodes]
        for reply in grid.send_and_receive(msgs, timeout=120):
            m = reply.content["m"]
            seen[int(reply.metadata.src_node_id)] = (m["sim"], int(m["pid"]))

    with compat.stable_simulation_node_ids(3):
        compat.run_simulation(
            server_app=server, client_app=client, num_supernodes=3, backend_config=backend_config(num_cpus=1)
        )
    predicted = compat.simulation_node_ids(3, 3)
    assert {node: pid for node, (_, pid) in seen.items()} == {node: i for i, node in enumerate(predicted)}
    assert {sim for sim, _ in seen.values()} == {1.0}
