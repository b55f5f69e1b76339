import subprocess
import sys

import torch

from zofed.zo import GaussianDirections, PoolDirections, Scratch, normal_table, perturb_, replay_, zo_step


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
