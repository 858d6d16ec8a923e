"""Who holds which slice of the training data: the split among all nodes, or among the honest ones only."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["data_assignment", "honest_partitions"]


def data_assignment(
    all_node_ids: Iterable[int], byzantine_ids: Iterable[int], split: str
) -> dict[int, tuple[int, int]]:
    """``{node_id: (partition_id, num_partitions)}``: which slice of the training data each node holds.

    * ``split = "all"``: every node, ranked by node id, holds partition ``0 .. n-1`` of ``n``.
    * ``split = "honest"`` (ByzFL and the authors' lab): the ``h = n - f`` honest nodes, ranked by node id,
      hold partitions ``0 .. h-1`` of ``h``; the ``j``-th Byzantine node (by id) gets a copy of partition
      ``j mod h`` (used only by attacks that train on their own data, such as ``lf``; ``lf-lab`` uses the
      honest nodes' partitions).

    The simulated server sends each sampled node its pair as ``resam-data-partition`` /
    ``resam-data-partitions``; a worker uses them over its node config's ``partition-id`` /
    ``num-partitions``. With ``"all"`` the server need not send them (the node config has the same
    split), except for ``lf-lab``, whose Byzantine nodes must know the honest nodes' partitions.
    """
    if split not in ("all", "honest"):
        raise ValueError(f"data split must be 'all' or 'honest', got {split!r}")
    nodes, byz = _ids("all_node_ids", all_node_ids), _ids("byzantine_ids", byzantine_ids)
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"all_node_ids has duplicates: {sorted(nodes)}")
    unknown = sorted(set(byz) - set(nodes))
    if unknown:
        raise ValueError(f"byzantine_ids {unknown} are not in all_node_ids")
    if split == "all":
        return {node: (i, len(nodes)) for i, node in enumerate(sorted(nodes))}
    bad = set(byz)
    honest = sorted(n for n in nodes if n not in bad)
    if not honest:
        raise ValueError(f"data split 'honest' needs an honest node, got {len(nodes)} nodes all Byzantine")
    out = {node: (i, len(honest)) for i, node in enumerate(honest)}
    out.update({node: (j % len(honest), len(honest)) for j, node in enumerate(sorted(bad))})
    return out


def honest_partitions(
    assignment: dict[int, tuple[int, int]], nodes: Iterable[int], byzantine_ids: Iterable[int]
) -> list[int]:
    """The partitions held by the honest nodes among ``nodes`` (this round's sampled nodes), sorted: what a
    ``lf-lab`` Byzantine node is sent as ``resam-honest-partitions``."""
    bad = set(_ids("byzantine_ids", byzantine_ids))
    return sorted(assignment[n][0] for n in _ids("nodes", nodes) if n not in bad)


def _ids(name: str, ids: Iterable[int]) -> list[int]:
    out = list(ids)
    for i in out:
        if isinstance(i, bool) or not isinstance(i, int):
            raise ValueError(f"{name} must be integers, got {i!r}")
    return out
