import hashlib
import subprocess
import sys

import pytest
import torch

from zofed.errors import ZofedError
from zofed.zo import (
    GaussianDirections,
    PoolDirections,
    Scratch,
    normal_table,
    perturb_,
    replay_,
    require_same_stream,
    zo_step,
)


def test_table_is_standard_normal_and_defined_by_the_project():
    table = normal_table(1 << 20)
    assert abs(table.mean().item()) < 0.005 and abs(table.std().item() - 1) < 0.005
    kurtosis = ((table - table.mean()) ** 4).mean().item() / table.var().item() ** 2
    assert abs(kurtosis - 3) < 0.05
    assert torch.equal(table, normal_table(1 << 20))
    assert not torch.equal(table, normal_table(1 << 20, table_seed=1))


def test_windows_are_normal_and_different_seeds_nearly_orthogonal():
    pool = PoolDirections(1 << 20)
    n = 200_000
    a = pool.fill_(torch.empty(n), seed=1, index=0)
    b = pool.fill_(torch.empty(n), seed=2, index=0).clone()
    c = pool.fill_(torch.empty(n), seed=1, index=1).clone()
    assert abs(a.mean().item()) < 0.02 and abs(a.std().item() - 1) < 0.02
    bound = 5 / n**0.5  # |cos| of independent N(0,1) vectors is ~1/sqrt(n)
    for x, y in ((a, b), (a, c), (b, c)):
        assert abs(torch.nn.functional.cosine_similarity(x, y, dim=0).item()) < bound
    cosines = [
        torch.nn.functional.cosine_similarity(pool.fill_(torch.empty(4096), s, 0), a[:4096], dim=0).abs().item()
        for s in range(3, 103)
    ]
    assert max(cosines) < 0.1 and sum(cosines) / len(cosines) < 0.03


def test_large_tensors_span_several_chunks():
    pool = PoolDirections(1 << 12)  # chunk = 1024 values
    z = pool.fill_(torch.empty(5000), seed=9, index=0)
    assert not torch.equal(z[:1024], z[1024:2048])


def test_pool_add_matches_fill_and_replay_restores():
    pool = PoolDirections(1 << 16)
    tensors = [torch.randn(300, 70), torch.randn(50)]
    start = [t.clone() for t in tensors]
    perturb_(tensors, seed=4, scale=0.5, directions=pool, scratch=Scratch())
    expected = start[0] + 0.5 * pool.fill_(torch.empty(300, 70), 4, 0)
    assert torch.allclose(tensors[0], expected, atol=1e-6)
    perturb_(tensors, seed=4, scale=-0.5, directions=pool, scratch=Scratch())
    assert all((t - s).abs().max() <= 1e-6 for t, s in zip(tensors, start))


def test_pool_step_and_replay_agree():
    pool = PoolDirections(1 << 16)
    tensors = [torch.randn(64, 32)]
    start = [tensors[0].clone()]
    loss = lambda: float((tensors[0] ** 2).sum())  # noqa: E731
    result = zo_step(tensors, loss, seed=3, mu=1e-3, lr=1e-3, directions=pool, scratch=Scratch())
    replayed = [start[0].clone()]
    replay_(replayed, [(result.seed, result.coeff)], pool, Scratch())
    assert (replayed[0] - tensors[0]).abs().max() <= 1e-5


def test_pool_directions_identical_across_processes():
    code = (
        "import torch;from zofed.zo import PoolDirections;"
        "print(repr(PoolDirections(1 << 16).fill_(torch.empty(7), seed=99, index=3).tolist()))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(other) == PoolDirections(1 << 16).fill_(torch.empty(7), seed=99, index=3).tolist()


def test_pool_and_gaussian_differ_but_both_lower_a_quadratic():
    finals = []
    for sampler in (PoolDirections(1 << 16), GaussianDirections()):
        tensors = [torch.ones(10, 10)]
        loss = lambda: float((tensors[0] ** 2).sum())  # noqa: E731
        before = loss()
        for seed in range(300):
            zo_step(tensors, loss, seed=seed, mu=1e-3, lr=2e-3, directions=sampler, scratch=Scratch())
        assert loss() < 0.5 * before
        finals.append(tensors[0])
    assert not torch.equal(*finals)


def test_one_z_whatever_the_dtype_rounded_only_where_stored():
    """A bf16 tensor gets round_bf16(θ + scale·z) with the float32 z a float32 server replays."""
    for sampler in (PoolDirections(1 << 16), GaussianDirections()):
        z = sampler.fill_(torch.empty(300, 70), 4, 0)
        start = torch.randn(300, 70).bfloat16()
        for scale in (0.7431, -1.3e-3):
            client = [torch.zeros(300, 70, dtype=torch.bfloat16), start.clone()]
            perturb_(client, seed=4, scale=scale, directions=_same_index(sampler), scratch=Scratch())
            assert torch.equal(client[0], (scale * z).bfloat16()), sampler.name
            server = start.float().add_(z, alpha=scale)  # the float32 replay of the same step
            assert torch.equal(client[1], server.bfloat16()), sampler.name


class _same_index:
    """Every tensor of a list gets the direction of index 0, so two tensors can be compared."""

    def __init__(self, base):
        self.base = base

    def add_(self, tensor, seed, index, scale, scratch):
        self.base.add_(tensor, seed, 0, scale, scratch)


def test_pool_table_is_copied_once_per_device():
    pool = PoolDirections(1 << 16)
    assert pool.table() is PoolDirections(1 << 16).table("cpu")
    assert torch.equal(pool.table()[: pool.chunk], pool.table()[pool.size :])  # padded: circular windows


def test_stream_ids_name_what_replays_identically():
    pool = PoolDirections(1 << 16)
    assert pool.stream_id("cpu") == pool.stream_id("meta") == PoolDirections(1 << 16).stream_id()
    assert pool.stream_id() != PoolDirections(1 << 17).stream_id() != PoolDirections(1 << 16, table_seed=1).stream_id()
    gaussian = GaussianDirections()
    assert gaussian.stream_id("cpu").startswith("gaussian/cpu/") and gaussian.stream_id() != pool.stream_id()
    require_same_stream(pool.stream_id(), PoolDirections(1 << 16).stream_id(), "client 3")
    with pytest.raises(ZofedError, match="client 3 draws directions from stream 'gaussian/cpu/"):
        require_same_stream(pool.stream_id(), gaussian.stream_id(), "client 3")


def test_pool_z_identical_across_processes_and_dtypes():
    code = (
        "import hashlib,torch;from zofed.zo import PoolDirections, Scratch, perturb_;p=PoolDirections(1 << 16);"
        "z=p.fill_(torch.empty(70000), seed=99, index=3);b=[torch.zeros(70000, dtype=torch.bfloat16)];"
        "perturb_(b, 99, 0.37, p, Scratch());"
        "h=lambda t: hashlib.sha256(t.float().numpy().tobytes()).hexdigest();"
        "print(p.stream_id(), h(z), h(b[0]))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    pool = PoolDirections(1 << 16)
    z = pool.fill_(torch.empty(70000), seed=99, index=3)
    bf16 = [torch.zeros(70000, dtype=torch.bfloat16)]
    perturb_(bf16, 99, 0.37, pool, Scratch())
    assert other == [pool.stream_id(), hashlib.sha256(z.numpy().tobytes()).hexdigest(),
                     hashlib.sha256(bf16[0].float().numpy().tobytes()).hexdigest()]
    # The bf16 tensor (index 0) got the float32 z of index 0, rounded once.
    assert torch.equal(bf16[0], (0.37 * pool.fill_(torch.empty(70000), seed=99, index=0)).bfloat16())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pool_z_on_cuda_is_the_cpu_z_and_the_step_never_syncs():
    pool, cuda = PoolDirections(1 << 16), torch.device("cuda")
    z_cpu = pool.fill_(torch.empty(70000), seed=5, index=2)
    assert torch.equal(pool.fill_(torch.empty(70000, device=cuda), seed=5, index=2).cpu(), z_cpu)
    tensors = [torch.zeros(300, 70, device=cuda), torch.zeros(70000, device=cuda, dtype=torch.bfloat16)]
    torch.cuda.set_sync_debug_mode("error")  # any device-to-host copy inside the pass raises
    try:
        perturb_(tensors, seed=5, scale=0.37, directions=pool, scratch=Scratch())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(tensors[1].cpu(), (0.37 * pool.fill_(torch.empty(70000), 5, 1)).bfloat16())
    gaussian = GaussianDirections()
    assert gaussian.stream_id(cuda) != gaussian.stream_id("cpu") and pool.stream_id(cuda) == pool.stream_id("cpu")
    first = gaussian.fill_(torch.empty(1000, device=cuda), 5, 2).cpu()
    assert torch.equal(first, gaussian.fill_(torch.empty(1000, device=cuda), 5, 2).cpu())
