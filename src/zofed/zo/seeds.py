"""Seed derivation shared by every process.

Seeds are mixed with splitmix64, a fixed integer function, so a seed derived on a client equals
the one derived on the server or another machine without sharing any RNG state. Results stay in
[0, 2^63) so they fit a signed 64-bit integer on every transport (Flower rejects larger ints).
"""

from __future__ import annotations

_MASK64 = (1 << 64) - 1
SEED_LIMIT = 1 << 63


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*parts: int) -> int:
    """Derive one seed in [0, 2^63) from a tuple of non-negative integers, order-sensitive."""
    state = 0x5EED
    for part in parts:
        if part < 0:
            raise ValueError(f"seed parts must be non-negative, got {part}")
        state = _splitmix64(state ^ (part & _MASK64))
    return state & (SEED_LIMIT - 1)
