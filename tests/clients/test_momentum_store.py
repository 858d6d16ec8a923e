"""MomentumStore.prune keeps only the files a next round or a restart can read, with real files on disk."""

from __future__ import annotations

import torch

from resam_flower.clients.momentum_store import Lineage, MomentumStore


def _rounds(store: MomentumStore) -> list[tuple[int, str]]:
    return [(r, g) for r, g, _ in store.files()]


def _value(store: MomentumStore, before: int, lineage: Lineage) -> float | None:
    found = store.latest(before, lineage)
    return None if found is None else float(store.read(found[1], 2)[0])


def test_keeps_the_newest_file_and_the_newest_up_to_the_checkpoint(tmp_path):
    store, lin = MomentumStore(tmp_path, 0), Lineage.fresh("aa")
    for r in range(1, 8):
        store.write(r, "aa", torch.full((2,), float(r)))
    store.write(9, "zz", torch.zeros(2))  # a file of a generation the lineage does not know
    (store.dir / "notes.txt").write_text("not a momentum file")
    assert store.prune(lin, checkpoint_round=4) == 6  # rounds 1-3, 5, 6 and the stale one
    assert _rounds(store) == [(4, "aa"), (7, "aa")]
    assert (store.dir / "notes.txt").exists()
    assert _value(store, 8, lin) == 7.0  # the next round
    assert _value(store, 5, lin.resumed(4, "bb")) == 4.0  # a restart from the checkpoint
    assert store.prune(lin, checkpoint_round=4) == 0  # nothing more to delete


def test_before_the_first_checkpoint_only_the_newest_file_stays(tmp_path):
    store, lin = MomentumStore(tmp_path, "n1"), Lineage.fresh("aa")
    for r in range(1, 31):  # 30 rounds, checkpoint round still 0 (or not sent at all)
        store.write(r, "aa", torch.full((2,), float(r)))
        store.prune(lin, checkpoint_round=0 if r % 2 else None)
        assert _rounds(store) == [(r, "aa")], r
    assert _value(store, 31, lin) == 30.0


def test_a_whole_run_with_periodic_checkpoints_and_a_crash(tmp_path):
    """Checkpoint every 5 rounds; the node misses rounds 9-11; the server dies after round 14."""
    store, lin = MomentumStore(tmp_path, 3), Lineage.fresh("aa")
    played = [r for r in range(1, 15) if r not in (9, 10, 11)]
    for r in played:
        ckpt = 5 * ((r - 1) // 5)  # the server's latest checkpoint when it sends round r
        store.write(r, "aa", torch.full((2,), float(r)))
        store.prune(lin, ckpt)
        newest_at_ckpt = max((p for p in played if p <= ckpt), default=None)
        expected = sorted({r} | ({newest_at_ckpt} if newest_at_ckpt else set()))
        assert [q for q, _ in _rounds(store)] == expected, (r, ckpt)
    # After round 14 (checkpoint 10): the node holds round 14 and round 8 (its newest up to round 10).
    assert _rounds(store) == [(8, "aa"), (14, "aa")]
    resumed = lin.resumed(10, "bb")
    assert _value(store, 11, resumed) == 8.0  # the replayed round 11 starts from round 8's momentum
    store.write(11, "bb", torch.full((2,), 11.0))
    assert store.prune(resumed, 10) == 1  # round 14 of the discarded future
    assert _rounds(store) == [(8, "aa"), (11, "bb")]
    assert _value(store, 12, resumed) == 11.0
