"""The in-process runtime's store of the simulated clients' kept models."""

import gc

import torch

from zofed.messages import Message
from zofed.metrics import peak_rss_mb, reset_peak_rss
from zofed.runtime.client import KeptStore, receive_model_


def tensors(version: int) -> tuple[torch.Tensor, ...]:
    return torch.full((3,), float(version)), torch.ones(2, dtype=torch.bfloat16)


def loaded(copy) -> tuple[torch.Tensor, ...]:
    into = tuple(torch.empty_like(tensor) for tensor in tensors(0))
    copy.load_into(into)
    return into


def test_store_keeps_the_newest_versions_and_returns_the_newest_not_past_the_round(tmp_path):
    store = KeptStore(tmp_path)
    assert store.client(5, at_most=10).version is None
    for version in (1, 3, 4, 6):
        store.client(5, at_most=version).save_from(version, tensors(version))
    newest = store.client(5, at_most=10)
    assert newest.version == 6 and torch.equal(loaded(newest)[0], torch.full((3,), 6.0))
    assert torch.equal(loaded(newest)[1], torch.ones(2, dtype=torch.bfloat16))
    earlier = store.client(5, at_most=5)
    assert earlier.version == 4 and torch.equal(loaded(earlier)[0], torch.full((3,), 4.0))  # a redone round's start
    assert store.client(5, at_most=2).version is None  # only the newest KeptStore.VERSIONS are kept
    assert store.client(6, at_most=10).version is None  # clients are apart


def test_a_redone_round_supersedes_newer_versions_and_forget_drops_the_client(tmp_path):
    store = KeptStore(tmp_path)
    for version in (2, 3, 4):
        store.client(1, at_most=version).save_from(version, tensors(version))
    store.client(1, at_most=3).save_from(3, tensors(30))  # a resumed run redoes round 4
    again = store.client(1, at_most=10)
    assert again.version == 3 and torch.equal(loaded(again)[0], torch.full((3,), 30.0))
    again.forget()
    assert store.client(1, at_most=10).version is None and not (tmp_path / "1").exists()


def test_a_replaying_client_holds_no_second_copy_of_its_model(tmp_path):
    """Load the kept copy, replay, save it again: the model's own tensors, never a whole copy beside them.

    Tensors of 40 MB, above glibc's largest mmap threshold, so every allocation and free shows in RSS;
    the control (the clone the kept copy used to be) shows what a second copy costs here.
    """
    model = [torch.randn(10 * 2**20) for _ in range(4)]
    size_mb = sum(tensor.numel() * tensor.element_size() for tensor in model) / 2**20
    kept = KeptStore(tmp_path).client(0, at_most=1)
    kept.save_from(1, model)
    replay = Message(kind="replay", round=3, seeds=(11, 12), scalars=(1e-3, -2e-3),
                     config={"directions": "pool", "pool_size": 2**16,
                             "replay": {"rounds": [2], "counts": [2], "base_version": 1}})

    def growth_mb(work) -> float:
        gc.collect()
        reset_peak_rss()
        before = peak_rss_mb()
        result = work()
        grown = peak_rss_mb() - before
        del result
        gc.collect()
        return grown

    received = growth_mb(lambda: receive_model_(replay, model, [str(i) for i in range(4)], KeptStore(tmp_path).client(0, at_most=2)))
    cloned = growth_mb(lambda: [tensor.clone() for tensor in model])
    assert cloned > 0.9 * size_mb  # the measurement sees a second copy
    assert received < 0.5 * size_mb, (received, size_mb)  # one tensor's scratch at most
    assert KeptStore(tmp_path).client(0, at_most=2).version == 2  # saved, before any training would run
