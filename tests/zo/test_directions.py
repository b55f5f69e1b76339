import subprocess
import sys
from functools import partial

import torch

from zofed.zo import GaussianDirections, mix_seed


def test_mix_seed_in_range_order_sensitive_and_stable():
    assert 0 <= mix_seed(1, 2) < 2**63
    assert mix_seed(1, 2) != mix_seed(2, 1)
    assert mix_seed(7, 0) == mix_seed(7, 0)
    seeds = {mix_seed(0, i) for i in range(10_000)}
    assert len(seeds) == 10_000


def test_gaussian_direction_is_seeded_per_tensor_and_leaves_global_rng_alone():
    sampler = GaussianDirections()
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = sampler.fill_(torch.empty(1000), seed=5, index=0).clone()
    b = sampler.fill_(torch.empty(1000), seed=5, index=0).clone()
    c = sampler.fill_(torch.empty(1000), seed=5, index=1).clone()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(before, torch.random.get_rng_state())
    assert abs(a.mean().item()) < 0.15 and abs(a.std().item() - 1) < 0.1


def test_directions_identical_across_processes():
    code = (
        "import torch;from zofed.zo import GaussianDirections;"
        "print(repr(GaussianDirections().fill_(torch.empty(5), seed=99, index=3).tolist()))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    here = GaussianDirections().fill_(torch.empty(5), seed=99, index=3).tolist()
    assert eval(other) == here


# Low precision: an update far below bf16's resolution survives in expectation (stochastic rounding),
# and every party that applies a record gets the same bits.

def _moved_by_small_updates(sampler, rounding="stochastic", steps=100, numel=1 << 16):
    """(moved, U): a bf16 tensor at 1.5 (ulp 2^-7) after `steps` records of |coeff| = 1e-4, and U = Σ coeff·z exactly."""
    from zofed.zo import Scratch, perturb_

    tensor, scratch = [torch.full((numel,), 1.5, dtype=torch.bfloat16)], Scratch()
    update = torch.zeros(numel, dtype=torch.float64)
    for seed in range(steps):
        coeff = 1e-4 if mix_seed(seed, 7) & 1 else -1e-4
        perturb_(tensor, seed, coeff, sampler, scratch, rounding=rounding)
        update += coeff * sampler.fill_(torch.empty(numel), seed, 0).double()
    return tensor[0].double() - 1.5, update


def _keeps_the_update(moved, update) -> bool:
    """The update survives: moved = U + zero-mean noise, checked along U and on the mean, 4.5 standard errors each."""
    noise = moved - update
    kept = float(moved @ update) / float(update @ update)
    kept_se = float(noise.std()) / float(update.norm())
    mean_se = float(noise.std()) / noise.numel() ** 0.5
    return abs(kept - 1.0) < 4.5 * kept_se and abs(float(noise.mean())) < 4.5 * mean_se


def test_stochastic_rounding_keeps_an_update_that_nearest_and_biased_rounding_lose(monkeypatch):
    import zofed.zo.directions as directions
    from zofed.zo import PoolDirections

    pool = PoolDirections(1 << 16)
    moved, update = _moved_by_small_updates(pool)
    assert float(update.abs().mean()) < 0.2 * 2**-7  # each weight's total update: a fifth of an ulp or less
    assert _keeps_the_update(moved, update)
    moved, update = _moved_by_small_updates(pool, rounding="nearest")
    assert not moved.any() and not _keeps_the_update(moved, update)  # round-to-nearest: nothing moves
    unbiased = directions.rounding_table
    monkeypatch.setattr(directions, "rounding_table", lambda dropped, device: unbiased(dropped, device) // 2)
    assert not _keeps_the_update(*_moved_by_small_updates(pool))  # bits on half the range: biased toward zero


def test_a_client_step_and_the_servers_replay_agree_bit_for_bit_with_stochastic_rounding():
    """bf16/fp16 weights away from a power of two (where a lost perturbation bit cannot be restored):
    the client's restore gives back θ, so its update is the server's, rounding bits included; and two
    replays of the same records agree bit for bit, for both samplers."""
    from zofed.zo import GaussianDirections, PoolDirections, Scratch, replay_, zo_step

    generator = torch.Generator().manual_seed(3)
    for dtype in (torch.bfloat16, torch.float16):
        for sampler in (PoolDirections(1 << 16), GaussianDirections()):
            start = [(1.1 + 0.8 * torch.rand(40_000, generator=generator)).to(dtype),
                     (-1.1 - 0.8 * torch.rand(300, 70, generator=generator)).to(dtype)]
            client, records = [t.clone() for t in start], []
            loss = partial(_weighted_sum, client)
            for seed in range(6):  # lr·g ~ 4e-4: every value stays inside (1, 2) in magnitude
                records.append((seed, zo_step(client, loss, seed, 1e-3, 1e-6, sampler, Scratch()).coeff))
            server, other = [t.clone() for t in start], [t.clone() for t in start]
            replay_(server, records, sampler, Scratch())
            replay_(other, records, sampler, Scratch())
            assert all(torch.equal(a, b) for a, b in zip(server, other)), (dtype, sampler.name)  # any replay: same bits
            assert sum(int((a != b).sum()) for a, b in zip(server, start)) > 500  # the updates moved it
            # The client's own model: bit for bit in bf16; fp16 keeps 13 float32 guard bits, not 16, so the
            # staging's float32 rounding sometimes tips a restore (measured 20-36 values of 61,000), by < 1 ulp.
            mismatched = sum(int((a != b).sum()) for a, b in zip(client, server))
            assert mismatched == 0 if dtype == torch.bfloat16 else mismatched < 100, (dtype, sampler.name, mismatched)
            assert all(((a.float() - b.float()).abs() <= torch.finfo(dtype).eps * b.float().abs()).all()
                       for a, b in zip(client, server))


def _weighted_sum(tensors) -> float:
    return float(sum(t.double().sum() * (k + 1) for k, t in enumerate(tensors)))


def test_a_fused_kernel_is_used_only_if_it_gives_the_plain_paths_bits(monkeypatch):
    import zofed.zo.directions as directions

    cpu = torch.device("cpu")

    def plain(target, window, alpha, restore, bits):
        directions._plain_add_(target, window, alpha, restore, torch.empty(target.numel()), bits)

    def multiply_then_add(target, window, alpha, restore, bits):  # inductor's arithmetic without prims.fma
        stage = target.float()
        if restore:
            stage = (stage + torch.tensor(restore) * window).bfloat16().float()
        stage = stage + torch.tensor(alpha) * window
        if bits is not None:
            stage = ((stage.view(torch.int32) + bits) & -(1 << 16)).view(torch.float32)
        target.copy_(stage)

    assert directions._probe_agrees(plain, True, True, torch.bfloat16, cpu)
    assert directions._probe_agrees(plain, False, False, torch.float16, cpu)
    assert not directions._probe_agrees(multiply_then_add, True, False, torch.bfloat16, cpu)
    monkeypatch.setenv("ZOFED_FUSED", "0")
    monkeypatch.setattr(directions, "_FUSED_KERNELS", {})
    assert directions._fused(torch.zeros(1, dtype=torch.bfloat16), True, True) is None  # turned off: the plain path
