"""Statistics of the pool sampler over seeds: E[zzᵀ] = I along structured directions, unbiased estimator.

Null hypothesis: for a fixed unit vector u, x = u·z over seeds is N(0, 1), as for i.i.d. Gaussian
z. Over n seeds the sample mean then has standard error 1/√n and the sample mean of x² (the
second moment, what E[zzᵀ] = I fixes) has 2/n variance, so each check allows K standard errors.
The sampler is deterministic, so the test is too: K = 4.5 keeps the chance that an unbiased
sampler fails any of the ~100 checks below 1e-3, while the old sampler's biases are tens to
thousands of standard errors (see docs/directions.md).

The LoRA-sized view materialises z with `fill_`. The full-parameter SmolLM2-sized view (134.5M
values) is computed from the sampler's own plan (`windows`: offset, length, sign per chunk) with
prefix sums of the table, so a seed costs O(chunks); `test_windows_are_what_fill_writes` ties the
plan to `fill_`.
"""

import math

import numpy as np
import pytest
import torch

from zofed.zo import PoolDirections, Scratch, perturb_, zo_estimate

K = 4.5
SEEDS = 2000
HIDDEN, INTER, LAYERS, VOCAB = 576, 1536, 30, 49152


def lora_shapes() -> list[tuple[int, ...]]:
    """SmolLM2-135M LoRA r=8 on q and v (460,800 values): A and B per projection and layer."""
    per_layer = [(8, HIDDEN), (HIDDEN, 8), (8, HIDDEN), (192, 8)]
    return per_layer * LAYERS


def full_shapes() -> list[tuple[int, ...]]:
    """SmolLM2-135M's parameters by shape (134.5M values): embedding, 30 layers, final norm."""
    layer = [(HIDDEN, HIDDEN), (192, HIDDEN), (192, HIDDEN), (HIDDEN, HIDDEN), (INTER, HIDDEN), (INTER, HIDDEN),
             (HIDDEN, INTER), (HIDDEN,), (HIDDEN,)]
    return [(VOCAB, HIDDEN), *(layer * LAYERS), (HIDDEN,)]


def check_standard_normal(x: np.ndarray, what: str) -> None:
    """x: samples over seeds (axis 0) of projections on unit vectors; each column must look N(0, 1)."""
    n = x.shape[0]
    mean, second = x.mean(axis=0), (x**2).mean(axis=0)
    assert np.all(np.abs(mean) <= K / math.sqrt(n)), f"{what}: mean {mean} (standard error {1 / math.sqrt(n):.3f})"
    assert np.all(np.abs(second - 1) <= K * math.sqrt(2 / n)), (
        f"{what}: E[x²] {second} (standard error {math.sqrt(2 / n):.3f})"
    )


class PlanProjector:
    """u·z for structured u over a view, from the sampler's plan and prefix sums of its table."""

    def __init__(self, pool: PoolDirections, shapes: list[tuple[int, ...]], frequency: int = 3) -> None:
        self.pool, self.numels = pool, [math.prod(shape) for shape in shapes]
        self.total = sum(self.numels)
        table = pool.table().double().numpy()
        self.omega = 2 * math.pi * frequency / self.total
        self.ones = np.concatenate([[0.0], np.cumsum(table)])
        phases = np.exp(1j * self.omega * np.arange(table.size))
        self.wave = np.concatenate([[0.0], np.cumsum(table * phases)])

    def project(self, seed: int) -> tuple[float, float, np.ndarray]:
        """(all-ones over the view, unit cosine with `frequency` periods over the view, all-ones per tensor)."""
        ones, wave, per_tensor, position = 0.0, 0.0j, np.empty(len(self.numels)), 0
        for index, numel in enumerate(self.numels):
            tensor_sum = 0.0
            for start, offset, length, sign in self.pool.windows(numel, seed, index):
                tensor_sum += sign * (self.ones[offset + length] - self.ones[offset])
                window = self.wave[offset + length] - self.wave[offset]
                wave += sign * np.exp(1j * self.omega * (position + start - offset)) * window
            ones += tensor_sum
            per_tensor[index] = tensor_sum / math.sqrt(numel)
            position += numel
        return ones / math.sqrt(self.total), wave.real * math.sqrt(2 / self.total), per_tensor


def test_windows_are_what_fill_writes():
    pool = PoolDirections(1 << 12)  # 1024-value chunks, so a 5000-value tensor spans five, one wrapping
    table = pool.table()[: pool.size]
    plan = [pool.windows(5000, seed, 3) for seed in range(200)]
    assert any(offset + length > pool.size for windows in plan for _, offset, length, _ in windows)
    assert {sign for windows in plan for *_, sign in windows} == {-1.0, 1.0}
    for seed, windows in enumerate(plan):
        expected = torch.cat([sign * table[(offset + torch.arange(length)) % pool.size]
                              for _, offset, length, sign in windows])
        assert torch.equal(pool.fill_(torch.empty(5000), seed, 3), expected)


def test_table_has_unit_mean_square_and_a_flat_circular_spectrum():
    table = PoolDirections().table()[: 1 << 22].double().numpy()
    assert abs(np.mean(table**2) - 1) < 1e-4
    power = np.abs(np.fft.rfft(table)) ** 2 / table.size
    # Whitened: every frequency carries the same power, up to the bf16 rounding of the values.
    assert np.abs(power - 1).max() < 0.05 and abs(power.mean() - 1) < 1e-4


@pytest.fixture(scope="module")
def lora_projections() -> dict[str, np.ndarray]:
    shapes = lora_shapes()
    numels = [math.prod(shape) for shape in shapes]
    total = sum(numels)
    positions = torch.arange(total, dtype=torch.float64)
    generator = torch.Generator().manual_seed(1234)
    units = torch.stack([
        torch.ones(total, dtype=torch.float64) / math.sqrt(total),
        torch.cos(2 * math.pi * 3 * positions / total) * math.sqrt(2 / total),
        torch.randn(total, generator=generator, dtype=torch.float64),
    ])
    units[2] /= units[2].norm()
    bounds = np.cumsum([0, *numels])
    pool, z = PoolDirections(), torch.empty(total)
    views = [z[a:b].view(shape) for a, b, shape in zip(bounds[:-1], bounds[1:], shapes)]
    whole, per_tensor = np.empty((SEEDS, 3)), np.empty((SEEDS, len(shapes)))
    for seed in range(SEEDS):
        for index, view in enumerate(views):
            pool.fill_(view, seed, index)
        z64 = z.double()
        whole[seed] = (units @ z64).numpy()
        per_tensor[seed] = np.add.reduceat(z64.numpy(), bounds[:-1]) / np.sqrt(numels)
    return {"whole": whole, "per_tensor": per_tensor}


def test_lora_view_projections_are_standard_normal(lora_projections):
    whole = lora_projections["whole"]
    check_standard_normal(whole[:, :1], "LoRA view, all-ones")
    check_standard_normal(whole[:, 1:2], "LoRA view, low-frequency cosine")
    check_standard_normal(whole[:, 2:], "LoRA view, fixed random vector")


def test_lora_view_per_tensor_all_ones_are_standard_normal_and_uncorrelated(lora_projections):
    per_tensor = lora_projections["per_tensor"]
    check_standard_normal(per_tensor, "LoRA view, all-ones per tensor")
    # Tensors must not share a bias: their projections are uncorrelated over seeds.
    correlation = np.corrcoef(per_tensor, rowvar=False)[np.triu_indices(per_tensor.shape[1], 1)]
    assert np.abs(correlation.mean()) <= K / math.sqrt(SEEDS * correlation.size)


def test_full_parameter_view_projections_are_standard_normal():
    projector = PlanProjector(PoolDirections(), full_shapes())
    assert projector.total == 134_515_008  # SmolLM2-135M trainable parameters
    rows = [projector.project(seed) for seed in range(SEEDS)]
    check_standard_normal(np.array([[ones, wave] for ones, wave, _ in rows])[:, :1], "full view, all-ones")
    check_standard_normal(np.array([[ones, wave] for ones, wave, _ in rows])[:, 1:], "full view, low-frequency cosine")
    check_standard_normal(np.stack([per_tensor for *_, per_tensor in rows]), "full view, all-ones per tensor")


def test_estimator_mean_on_a_quadratic_is_its_gradient():
    """f(θ) = ½ Σ a_k θ_k² + b·θ: the two-point estimate g·z has mean ∇f = aθ + b if E[zzᵀ] = I.

    The gradient is given a large all-ones component, the direction the old sampler was biased
    along; the check is per structured unit vector u, with the standard error of u·(g z) measured
    over the seeds.
    """
    shapes = lora_shapes()
    numels = [math.prod(shape) for shape in shapes]
    total = sum(numels)
    generator = torch.Generator().manual_seed(7)
    theta = torch.randn(total, generator=generator)
    curvature = torch.rand(total, generator=generator) + 0.5
    bias = torch.randn(total, generator=generator) * 0.1 + 0.05
    gradient = (curvature * theta + bias).double()
    bounds = np.cumsum([0, *numels])
    tensors = [theta[a:b].view(shape) for a, b, shape in zip(bounds[:-1], bounds[1:], shapes)]

    def loss() -> float:
        theta64 = theta.double()
        return float(0.5 * (curvature * theta64 * theta64).sum() + (bias * theta64).sum())

    positions = torch.arange(total, dtype=torch.float64)
    units = torch.stack([torch.ones(total, dtype=torch.float64) / math.sqrt(total),
                         torch.cos(2 * math.pi * 3 * positions / total) * math.sqrt(2 / total),
                         gradient / gradient.norm()])
    pool, scratch, z = PoolDirections(), Scratch(), torch.zeros(total)
    z_views = [z[a:b].view(shape) for a, b, shape in zip(bounds[:-1], bounds[1:], shapes)]
    seeds = 1000
    projections = np.empty((seeds, 3))
    for seed in range(seeds):
        estimate, _ = zo_estimate(tensors, loss, seed, 1e-2, pool, scratch)
        z.zero_()
        perturb_(z_views, seed, 1.0, pool, scratch)
        projections[seed] = estimate * (units @ z.double()).numpy()
    expected = (units @ gradient).numpy()
    error = projections.mean(axis=0) - expected
    standard_error = projections.std(axis=0, ddof=1) / math.sqrt(seeds)
    assert np.all(np.abs(error) <= K * standard_error), f"mean {projections.mean(axis=0)} vs ∇f {expected} ± {standard_error}"
