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

import cmath
import math

import numpy as np
import pytest
import torch

from zofed.zo import PoolDirections, Scratch, two_point

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
    """u·z for structured unit vectors u over a view, from the sampler's plan and prefix sums of its table."""

    def __init__(self, pool: PoolDirections, shapes: list[tuple[int, ...]], frequency: int = 3) -> None:
        self.pool, self.numels = pool, [math.prod(shape) for shape in shapes]
        self.total = sum(self.numels)
        table = pool.table().double().numpy()
        self.omega = 2 * math.pi * frequency / self.total
        self.ones = np.concatenate([[0.0], np.cumsum(table)])
        self.wave = np.concatenate([[0.0], np.cumsum(table * np.exp(1j * self.omega * np.arange(table.size)))])

    def project(self, seeds: range) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per seed: all-ones over the view, a unit cosine with `frequency` periods over it, all-ones per tensor."""
        ones, wave, per_tensor = np.empty(len(seeds)), np.empty(len(seeds)), np.empty((len(seeds), len(self.numels)))
        for row, seed in enumerate(seeds):
            total_wave, position = 0.0j, 0
            for index, numel in enumerate(self.numels):
                tensor_sum = 0.0
                for start, offset, length, sign in self.pool.windows(numel, seed, index):
                    tensor_sum += sign * (self.ones[offset + length] - self.ones[offset])
                    # Σ_a t[offset + a]·e^{iω(position + start + a)}, from the prefix sums of t·e^{iωk}.
                    phase = cmath.exp(1j * self.omega * (position + start - offset))
                    total_wave += sign * phase * (self.wave[offset + length] - self.wave[offset])
                per_tensor[row, index] = tensor_sum / math.sqrt(numel)
                position += numel
            ones[row] = per_tensor[row] @ np.sqrt(self.numels) / math.sqrt(self.total)
            wave[row] = total_wave.real * math.sqrt(2 / self.total)
        return ones, wave, per_tensor


def views_of(flat: torch.Tensor, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    bounds = np.cumsum([0, *(math.prod(shape) for shape in shapes)])
    return [flat[a:b].view(shape) for a, b, shape in zip(bounds[:-1], bounds[1:], shapes)]


@pytest.fixture(scope="module", params=["lora", "full"])
def view(request) -> dict:
    """A LoRA-sized or SmolLM2 full-parameter-sized view and its structured projections over SEEDS seeds."""
    shapes = lora_shapes() if request.param == "lora" else full_shapes()
    ones, wave, per_tensor = PlanProjector(PoolDirections(), shapes).project(range(SEEDS))
    return {"shapes": shapes, "ones": ones, "wave": wave, "per_tensor": per_tensor}


def test_structured_projections_are_standard_normal(view):
    check_standard_normal(view["ones"][:, None], "all-ones over the view")
    check_standard_normal(view["wave"][:, None], "low-frequency cosine over the view")
    check_standard_normal(view["per_tensor"], "all-ones per tensor")
    # Tensors must not share a bias: their all-ones projections are uncorrelated over seeds.
    per_tensor = view["per_tensor"]
    correlation = np.corrcoef(per_tensor, rowvar=False)[np.triu_indices(per_tensor.shape[1], 1)]
    assert abs(correlation.mean()) <= K / math.sqrt(SEEDS * correlation.size)


def test_estimator_mean_on_a_quadratic_is_its_gradient(view):
    """A quadratic's two-point estimate is exactly (z·∇f) z, whose mean is ∇f if E[zzᵀ] = I.

    ∇f = α·u_ones + β·u_cos, large along all-ones, the direction the old sampler was biased
    along. The mean over seeds of u·((z·∇f) z) must match u·∇f for u = u_ones, u_cos and ∇f/‖∇f‖,
    within K standard errors measured from the same seeds.
    (`test_two_point_estimate_is_the_directional_derivative` ties two_point to z·∇f.)
    """
    alpha, beta = 3.0, -2.0
    ones, wave = view["ones"], view["wave"]
    estimate = alpha * ones + beta * wave
    norm = math.hypot(alpha, beta)
    projections = estimate[:, None] * np.stack([ones, wave, estimate / norm], axis=1)
    error = projections.mean(axis=0) - np.array([alpha, beta, norm])
    standard_error = projections.std(axis=0, ddof=1) / math.sqrt(SEEDS)
    assert np.all(np.abs(error) <= K * standard_error), (
        f"mean of u·((z·∇f) z) {projections.mean(axis=0)} vs u·∇f {[alpha, beta, norm]}, "
        f"standard error {standard_error}"
    )


def test_two_point_estimate_is_the_directional_derivative():
    """two_point on f(θ) = ∇f·θ + ½‖θ‖² at θ = 0 returns z·∇f, z being the plan's direction."""
    shapes = lora_shapes()
    numel = sum(math.prod(shape) for shape in shapes)
    positions = torch.arange(numel, dtype=torch.float64)
    alpha, beta = 3.0, -2.0
    gradient = (alpha / math.sqrt(numel) + beta * math.sqrt(2 / numel) * torch.cos(2 * math.pi * 3 * positions / numel))
    theta = torch.zeros(numel)

    def loss() -> float:
        theta64 = theta.double()
        return float(gradient @ theta64 + 0.5 * theta64 @ theta64)

    pool, scratch, tensors = PoolDirections(), Scratch(), views_of(theta, shapes)
    ones, wave, _ = PlanProjector(pool, shapes).project(range(20))
    estimates = [two_point(tensors, loss, seed, 1e-3, pool, scratch)[0] for seed in range(20)]
    assert np.allclose(estimates, alpha * ones + beta * wave, rtol=1e-4, atol=1e-4)


def test_lora_view_projection_on_a_fixed_random_vector_is_standard_normal():
    shapes, seeds = lora_shapes(), 400
    numel = sum(math.prod(shape) for shape in shapes)
    unit = torch.randn(numel, generator=torch.Generator().manual_seed(1234))
    unit /= unit.norm()
    pool, z = PoolDirections(), torch.empty(numel)
    views = views_of(z, shapes)
    x = np.empty((seeds, 1))
    for seed in range(seeds):
        for index, view in enumerate(views):
            pool.fill_(view, seed, index)
        x[seed] = torch.dot(unit, z).item()
    check_standard_normal(x, "fixed random vector")


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
