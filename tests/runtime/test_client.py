"""The in-process runtime's store of the simulated clients' kept models."""

import torch

from zofed.runtime.client import KeptModel, KeptStore


def model(version: int) -> KeptModel:
    return KeptModel(version, (torch.full((3,), float(version)), torch.ones(2, dtype=torch.bfloat16)))


def test_store_keeps_the_newest_versions_and_returns_the_newest_not_past_the_round(tmp_path):
    store = KeptStore(tmp_path)
    assert store.load(5, at_most=10) is None
    for version in (1, 3, 4, 6):
        store.save(5, model(version))
    loaded = store.load(5, at_most=10)
    assert loaded.version == 6 and torch.equal(loaded.tensors[0], torch.full((3,), 6.0))
    assert loaded.tensors[1].dtype == torch.bfloat16
    assert store.load(5, at_most=5).version == 4  # a redone round starts from the version before it
    assert store.load(5, at_most=2) is None  # only the newest KeptStore.VERSIONS are kept
    assert store.load(6, at_most=10) is None  # clients are apart


def test_a_redone_round_supersedes_newer_versions_and_none_forgets_the_client(tmp_path):
    store = KeptStore(tmp_path)
    for version in (2, 3, 4):
        store.save(1, model(version))
    store.save(1, model(3))  # a resumed run redoes round 4
    assert store.load(1, at_most=10).version == 3
    store.save(1, None)
    assert store.load(1, at_most=10) is None and not (tmp_path / "1").exists()
