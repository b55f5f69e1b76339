"""Direction samplers: z(seed, i) for trainable tensor i, reproducible on any process.

There is one z per (seed, tensor), a float32 tensor, whatever the dtype or device of the tensor
it perturbs: a bf16 tensor gets round_bf16(θ + scale·z), the rounding happening only where the
sum is stored, so a bf16 client and a float32 server replaying its records use the same z.

`gaussian` is exact: a `torch.Generator` on the tensor's device, seeded from mix(seed, i),
fills a float32 buffer with N(0, 1). The global RNG is never touched. Its stream belongs to
torch, not to us: the CPU generator (mt19937) and the CUDA one (Philox, whose mapping of values
to elements depends on the launch grid and so on the GPU model) give different z for the same
seed, and MPS has a third. Gaussian seeds therefore replay only between processes whose
`stream_id(device)` is equal.

`pool` is fast and portable: a table of N(0, 1)-distributed values is built once per process by
this project's counter-based generator (splitmix64 -> Box-Muller in float64), then whitened:
its circular autocorrelation is made exactly δ (flat spectrum, unit mean square) before it is
rounded to float32. Each tensor is cut into chunks; chunk c of tensor
i takes the circular window of the table at an offset hashed from (seed, i, c), times a sign
from the same hash. Over seeds the offset is uniform, so two values of one window have
E[z_a z_b] = the table's circular autocorrelation = δ_ab, and values of different chunks are
decorrelated by their independent signs: E[zzᵀ] = I at every size. Without the sign every
window carries the table's sample mean (a 134M-value z from a 4M table projected on the
all-ones unit vector gave −12 ± 0.7, i.i.d. gives 0 ± 1); with the sign but a plain (or merely
centred) table, a window's low frequencies carry the table's random spectrum (variance of that
projection 0.43 to 1.69 instead of 1 for 1M-value chunks). tests/zo/test_pool_statistics.py
measures both.

The table is copied to each device once, padded by one chunk so every circular window is a
contiguous slice; a step does no random generation and no host round trip: a perturbation pass
is one `add_` per chunk with alpha = scale·sign (offsets and signs are host integers). z is
bit-identical on every device and dtype: every copy holds the same float32 values, and a bf16 or
fp16 tensor is updated through float32 blocks, exactly as a float32 server computes θ + scale·z,
then rounded once. `stream_id` includes a CRC of the table, so
a machine whose float64 maths rounded a value differently would be detected, not mixed.

Runtimes compare `stream_id(device)` of the server's sampler with each client's before
exchanging seeds (`require_same_stream`): equal ids mean the same z for every (seed, tensor).

Low precision (bf16, fp16): a pass is `θ ← round(rn(θ + restore·z) + scale·z)`, staged in
float32 blocks. `restore` undoes the previous perturbation first, rounded to nearest, which
gives back θ bit for bit except where information was lost (see docs/directions.md), so the
step's update is applied to θ itself, not to θ plus the rounding of ±μz. The final rounding is to
nearest for a perturbation and stochastic for an update (`stochastic=True`): rounded up with
probability equal to the fraction of an ulp, so E[round(x)] = x and an update far below the
format's resolution still moves θ by the right amount on average. Its random bits come from a
fixed table of uniform integers at offsets hashed from (seed, tensor, block), like the pool's
windows: whoever applies the record (seed, coeff) to the same θ, a client or the server, gets the
same bits. float32 tensors take neither: θ += (restore + scale)·z, one add, as always.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from functools import lru_cache
from typing import ClassVar, Protocol

import numpy as np

from zofed.errors import ZofedError
from zofed.lazy import lazy_import
from zofed.zo.seeds import mix_seed

torch = lazy_import("torch")  # imported on first use: the registry reads this module without torch

DEFAULT_POOL_SIZE = 1 << 22  # 4M values, 16 MiB: small next to any LLM
POOL_CHUNK = 1 << 20
POOL_VERSION = 2  # 1: plain windows of the raw table (biased); 2: whitened table, circular windows, signs


class DirectionSampler(Protocol):
    name: ClassVar[str]

    def fill_(self, out: torch.Tensor, seed: int, index: int) -> torch.Tensor:
        """Fill float32 `out` in place with the direction of tensor `index` for `seed`."""
        ...

    def add_(self, tensor: torch.Tensor, seed: int, index: int, scale: float, scratch: torch.Tensor,
             restore: float = 0.0, stochastic: bool = False) -> None:
        """tensor += (restore + scale) · z(seed, index), in place; `scratch` is a float32 buffer of tensor's
        shape and device. A bf16/fp16 tensor is restored (rounded to nearest) before `scale` is added and
        rounded, stochastically when asked (module docstring)."""
        ...

    def stream_id(self, device: torch.device | str = "cpu") -> str:
        """Equal ids on two processes mean equal z for every (seed, index) on those devices."""
        ...


class GaussianDirections:
    name: ClassVar[str] = "gaussian"

    def __init__(self) -> None:
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device)
        return self._generators[device]

    def fill_(self, out: torch.Tensor, seed: int, index: int) -> torch.Tensor:
        generator = self._generator(out.device)
        generator.manual_seed(mix_seed(seed, index))
        return out.normal_(generator=generator)

    def add_(self, tensor: torch.Tensor, seed: int, index: int, scale: float, scratch: torch.Tensor,
             restore: float = 0.0, stochastic: bool = False) -> None:
        z = self.fill_(scratch, seed, index)
        if not low_precision(tensor):
            tensor.add_(z, alpha=restore + scale)
            return
        with _contiguous(tensor) as flat:
            stage = torch.empty(min(flat.numel(), _STAGE_BLOCK), dtype=torch.float32, device=flat.device)
            _staged_add_(flat, z.view(-1), 0, scale, restore, stage, _bits(seed, index, stochastic, flat))

    def stream_id(self, device: torch.device | str = "cpu") -> str:
        device = torch.device(device)
        # Conservative: what selects torch's kernel and stream. CPU: the vectorised normal_ path
        # depends on the instruction set; CUDA: the launch grid depends on the GPU model.
        if device.type == "cpu":
            detail = torch.backends.cpu.get_cpu_capability()
        elif device.type == "cuda":
            detail = torch.cuda.get_device_name(device)
        else:
            detail = device.type
        return f"gaussian/{device.type}/{detail}/torch-{torch.__version__.split('+')[0]}/{ROUNDING_VERSION}"


@lru_cache(maxsize=4)
def normal_table(size: int, table_seed: int = 0) -> torch.Tensor:
    """`size` i.i.d. N(0, 1) float32 values from splitmix64 counters and Box-Muller; identical everywhere."""
    return torch.from_numpy(_normal_values(size, table_seed).astype(np.float32))


def _normal_values(size: int, table_seed: int) -> np.ndarray:
    half = (size + 1) // 2
    counters = np.arange(2 * half, dtype=np.uint64) + np.uint64(mix_seed(table_seed, 0x7AB1E))
    bits = _splitmix64(counters)
    # 53 random bits per uniform; (k + 0.5) / 2^53 keeps u strictly inside (0, 1) for the log.
    uniform = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
    u1, u2 = uniform[:half], uniform[half:]
    radius = np.sqrt(-2.0 * np.log(u1))
    return np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])[:size]


def pool_table(size: int, table_seed: int = 0) -> torch.Tensor:
    """The pool's float32 table: normal values whitened to a flat circular spectrum.

    Keeping each frequency's phase and setting every magnitude equal (DC included) makes the
    circular autocorrelation δ and the mean square 1; the values stay Gaussian in distribution
    (a sum of many random-phase cosines).
    """
    spectrum = np.fft.rfft(_normal_values(size, table_seed))
    spectrum /= np.abs(spectrum)
    values = np.fft.irfft(spectrum, n=size)
    del spectrum  # float64 temporaries are the build's peak memory
    values /= np.sqrt(np.mean(values * values))
    return torch.from_numpy(values.astype(np.float32))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps modulo 2^64 by design
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


@lru_cache(maxsize=16)
def _padded_table(size: int, table_seed: int, pad: int, device: torch.device) -> torch.Tensor:
    """The table followed by its first `pad` values, on `device`: circular windows become slices.

    Built once per process on the CPU (the only copy there) and copied from it to other devices.
    """
    if device.type != "cpu":
        return _padded_table(size, table_seed, pad, torch.device("cpu")).to(device)
    table = pool_table(size, table_seed)
    return torch.cat([table, table[:pad]])


@lru_cache(maxsize=4)
def _table_crc(size: int, table_seed: int, pad: int) -> int:
    table = _padded_table(size, table_seed, pad, torch.device("cpu"))[:size]
    return zlib.crc32(table.numpy().astype("<f4").tobytes())


# torch's native bf16/fp16 add_ rounds alpha to the tensor's dtype (0.7431 becomes 0.7422), and
# its mixed-dtype add_ (float32 window) is ~3x slower; staging blocks through float32 computes
# θ + scale·z exactly as the float32 server does and rounds once, at ~2x the native cost.
_STAGE_BLOCK = 1 << 18  # 1 MiB of float32: stays in cache between the passes over a block
# Stochastic rounding's bits: each value of [0, 2^16) ROUNDING_TABLE / 2^16 times, shuffled; a block of
# ROUNDING_BLOCK values of a tensor reads the window at an offset hashed from (seed, tensor, block).
ROUNDING_TABLE = 1 << 20
ROUNDING_BLOCK = 1 << 20  # = the pool's chunk: a fused pass reads one window of bits per window of z
_ROUNDING_TAG = 0x5124D  # separates the rounding offsets' hash from the pool's offsets and signs
_DROPPED_BITS = {"bfloat16": 16, "float16": 13}  # float32 mantissa bits below the format's last one
# In every stream id: a party that rounds bf16/fp16 replays differently (an older zofed: to nearest) is refused.
ROUNDING_VERSION = "sr1"


def low_precision(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is bf16 or fp16: updated through float32 blocks, restores and roundings explicit."""
    return tensor.dtype in (torch.bfloat16, torch.float16)


@lru_cache(maxsize=8)
def rounding_table(dropped: int, device: torch.device) -> torch.Tensor:
    """int32 values uniform on [0, 2^dropped) (each equally often), padded by one block; the same everywhere."""
    if device.type != "cpu":
        return rounding_table(dropped, torch.device("cpu")).to(device)
    keys = _splitmix64(np.arange(ROUNDING_TABLE, dtype=np.uint64) + np.uint64(mix_seed(_ROUNDING_TAG)))
    values = (np.arange(ROUNDING_TABLE, dtype=np.int64) % (1 << 16))[np.argsort(keys, kind="stable")] >> (16 - dropped)
    table = torch.from_numpy(values.astype(np.int32))
    return torch.cat([table, table[:ROUNDING_BLOCK]])


class _Bits:
    """The stochastic-rounding bits of tensor `index` for `seed`, by block of the flat tensor."""

    def __init__(self, seed: int, index: int, dropped: int, device: torch.device) -> None:
        self.seed, self.index, self.table = seed, index, rounding_table(dropped, device)

    def at(self, begin: int, end: int) -> torch.Tensor:
        """Bits of values [begin, end), a range within one block of ROUNDING_BLOCK values."""
        block, within = divmod(begin, ROUNDING_BLOCK)
        offset = mix_seed(self.seed, self.index, block, _ROUNDING_TAG) % ROUNDING_TABLE + within
        return self.table[offset : offset + end - begin]


def _bits(seed: int, index: int, stochastic: bool, tensor: torch.Tensor) -> _Bits | None:
    if not stochastic:
        return None
    return _Bits(seed, index, _DROPPED_BITS[str(tensor.dtype).removeprefix("torch.")], tensor.device)


class _contiguous:
    """The flat tensor to update in place; a non-contiguous one is updated through a copy, written back."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self.flat = tensor.view(-1) if tensor.is_contiguous() else tensor.contiguous().view(-1)

    def __enter__(self) -> torch.Tensor:
        return self.flat

    def __exit__(self, *exc) -> None:
        if not self.tensor.is_contiguous():
            self.tensor.copy_(self.flat.view(self.tensor.shape))


def _staged_add_(target: torch.Tensor, window: torch.Tensor, start: int, alpha: float, restore: float,
                 stage: torch.Tensor, bits: _Bits | None) -> None:
    """target ← round(rn(target + restore·window) + alpha·window) for a flat bf16/fp16 `target`, in float32 blocks.

    `target` holds the tensor's values from position `start` on (a pool chunk), so the rounding bits
    are those of the tensor's own positions. Rounding: to nearest where `bits` is None, else
    stochastic: the float32 value's bits below the format's last one plus a uniform integer of as
    many bits, then truncated (sign-magnitude, so the magnitude rounds up with probability equal to
    the dropped fraction; exact for bf16, for fp16 above its subnormals). Ranges of FUSED_MIN values
    or more take the fused kernel where one could be built and gives these very bits (`_fused`).
    """
    if alpha == 0.0:  # a restore alone is one add rounded to nearest, a plain perturbation's
        alpha, restore, bits = restore, 0.0, None
    begin, numel = 0, target.numel()
    while begin < numel:
        end = min(numel, begin + ROUNDING_BLOCK - (start + begin) % ROUNDING_BLOCK)  # no range straddles two blocks
        part_bits = None if bits is None else bits.at(start + begin, start + end)
        kernel = _fused(target, restore != 0.0, bits is not None) if end - begin >= FUSED_MIN else None
        if kernel is None or not _ran(kernel, target[begin:end], window[begin:end], alpha, restore, part_bits):
            _plain_add_(target[begin:end], window[begin:end], alpha, restore, stage, part_bits)
        begin = end


def _plain_add_(target: torch.Tensor, window: torch.Tensor, alpha: float, restore: float, stage: torch.Tensor,
                bits: torch.Tensor | None) -> None:
    """`_staged_add_` in torch operations, block by block of _STAGE_BLOCK values (each stays in cache)."""
    mask = -(1 << _DROPPED_BITS[str(target.dtype).removeprefix("torch.")])
    for begin in range(0, target.numel(), _STAGE_BLOCK):
        end = min(begin + _STAGE_BLOCK, target.numel())
        block, part, stage_part = target[begin:end], window[begin:end], stage[: end - begin]
        stage_part.copy_(block)
        if restore != 0.0:
            stage_part.add_(part, alpha=restore)
            block.copy_(stage_part)  # rounded to nearest: θ back (module docstring)
            stage_part.copy_(block)
        stage_part.add_(part, alpha=alpha)
        if bits is not None:
            raw = stage_part.view(torch.int32)
            raw.add_(bits[begin:end])
            raw.bitwise_and_(mask)
        block.copy_(stage_part)


# The fused kernel: the same arithmetic as `_plain_add_` in one pass over memory, generated by
# torch.compile (inductor and a C++ compiler; CPU tensors only). It is used only after it
# gave `_plain_add_`'s bits on a probe for its (variant, dtype, device), so a client with a compiler
# and a server without one replay identically; otherwise, or with ZOFED_FUSED=0, the plain path runs.
FUSED_MIN = 1 << 18  # shorter ranges (tests, small models) never pay a compilation
_FUSED_KERNELS: dict[tuple, Callable | None] = {}


def _fused(target: torch.Tensor, restore: bool, stochastic: bool) -> Callable | None:
    key = (restore, stochastic, target.dtype, target.device)
    if key not in _FUSED_KERNELS:
        # CPU only for now: on a GPU the kernel's two scalars would be a host-to-device copy per call
        # (the pool's passes make none), and no GPU has checked it.
        wanted = os.environ.get("ZOFED_FUSED", "1") != "0" and target.device.type == "cpu"
        _FUSED_KERNELS[key] = _build_fused(*key) if wanted else None
    return _FUSED_KERNELS[key]


def _ran(kernel: Callable, *args) -> bool:
    """Run `kernel`; a later compilation that fails (a new shape) turns it off for good, before it wrote anything."""
    try:
        kernel(*args)
        return True
    except Exception:
        for key, known in list(_FUSED_KERNELS.items()):
            if known is kernel:
                _FUSED_KERNELS[key] = None
        return False


def _build_fused(restore: bool, stochastic: bool, dtype: torch.dtype, device: torch.device) -> Callable | None:
    mask = -(1 << _DROPPED_BITS[str(dtype).removeprefix("torch.")])

    def pass_(target, window, alpha, restore_scale, bits):
        # prims.fma, not stage + alpha·window: torch's own add_ with alpha is a fused multiply-add where the
        # CPU has one, and inductor would otherwise emit a multiply and an add (1-3 values in 262K differ).
        stage = target.float()
        if restore:
            stage = torch.ops.prims.fma(window, restore_scale.expand_as(window), stage).to(target.dtype).float()
        stage = torch.ops.prims.fma(window, alpha.expand_as(window), stage)
        if stochastic:
            stage = ((stage.view(torch.int32) + bits) & mask).view(torch.float32)
        target.copy_(stage)

    try:
        import torch._inductor.config as inductor_config

        inductor_config.emulate_precision_casts = True  # else the rounding to the dtype between the adds is elided
        compiled = torch.compile(pass_, dynamic=True, fullgraph=True)

        def kernel(target, window, alpha, restore_scale, bits):
            scalars = torch.tensor([alpha, restore_scale], dtype=torch.float32, device=target.device)
            compiled(target, window, scalars[0], scalars[1], bits)

        if _probe_agrees(kernel, restore, stochastic, dtype, device):
            return kernel
    except Exception:  # no compiler, no triton, an inductor failure: the plain path is always there
        pass
    return None


def _probe_agrees(kernel: Callable, restore: bool, stochastic: bool, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether `kernel` gives `_plain_add_`'s bits on values from 1e-3 to 4 of both signs (a tail included).

    A probe, not a proof: a kernel computing the adds differently tips ~2^-16 of its roundings; the
    nearest variants see tens of those here, a stochastic one a few."""
    generator = torch.Generator().manual_seed(0x5EED)
    numel = FUSED_MIN + 13
    values = torch.randn(numel, generator=generator) * torch.logspace(-3, 0.6, numel)
    window = torch.randn(numel, generator=generator).to(device)
    bits = rounding_table(_DROPPED_BITS[str(dtype).removeprefix("torch.")], device)[:numel] if stochastic else None
    plain, fused = values.to(dtype).to(device), values.to(dtype).to(device)
    # A multiply-then-add differs from a fused multiply-add where alpha·z is not small next to θ, and
    # shows only where that tips a rounding to the dtype: hence large coefficients, several of them.
    for alpha, restore_scale in ((1.234e-4, -7.1e-4), (-0.37, 0.0029), (0.81, -1.3), (-1.7, 0.45), (2.3, -0.9),
                                 (-0.52, 1.1)):
        _plain_add_(plain, window, alpha, restore_scale if restore else 0.0, torch.empty(numel, device=device), bits)
        kernel(fused, window, alpha, restore_scale if restore else 0.0, bits)
    return torch.equal(plain.view(torch.int16), fused.view(torch.int16))


class PoolDirections:
    name: ClassVar[str] = "pool"

    def __init__(self, size: int = DEFAULT_POOL_SIZE, table_seed: int = 0) -> None:
        if size < 1024:
            raise ValueError(f"direction pool size {size} is too small; use at least 1024 values")
        self.size, self.table_seed = size, table_seed
        self.chunk = min(POOL_CHUNK, size // 4)
        self.table("cpu")  # built now, so its float64 temporaries fall outside the step's memory

    def table(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The padded float32 table on `device`, copied there once per process."""
        return _padded_table(self.size, self.table_seed, self.chunk, torch.device(device))

    def windows(self, numel: int, seed: int, index: int) -> list[tuple[int, int, int, float]]:
        """(start in tensor, offset in table, length, sign) of each chunk of tensor `index`: z's definition."""
        plan = []
        for chunk, start in enumerate(range(0, numel, self.chunk)):
            hashed = mix_seed(seed, index, chunk)
            # Low bit: the sign; the other 62 bits: the offset (uniform up to a modulo bias of size/2^62).
            plan.append((start, (hashed >> 1) % self.size, min(self.chunk, numel - start), -1.0 if hashed & 1 else 1.0))
        return plan

    def fill_(self, out: torch.Tensor, seed: int, index: int) -> torch.Tensor:
        table, flat = self.table(out.device), out.view(-1)
        for start, offset, length, sign in self.windows(flat.numel(), seed, index):
            torch.mul(table[offset : offset + length], sign, out=flat[start : start + length])
        return out

    def add_(self, tensor: torch.Tensor, seed: int, index: int, scale: float, scratch: torch.Tensor,
             restore: float = 0.0, stochastic: bool = False) -> None:
        if not low_precision(tensor):
            if not tensor.is_contiguous():
                tensor.add_(self.fill_(scratch, seed, index), alpha=restore + scale)
                return
            table, flat = self.table(tensor.device), tensor.view(-1)
            for start, offset, length, sign in self.windows(flat.numel(), seed, index):
                flat[start : start + length].add_(table[offset : offset + length], alpha=(restore + scale) * sign)
            return
        table, stage = self.table(tensor.device), scratch.view(-1)
        with _contiguous(tensor) as flat:
            bits = _bits(seed, index, stochastic, flat)
            for start, offset, length, sign in self.windows(flat.numel(), seed, index):
                _staged_add_(flat[start : start + length], table[offset : offset + length], start, scale * sign,
                             restore * sign, stage, bits)

    def stream_id(self, device: torch.device | str = "cpu") -> str:
        # The same on every device by construction: every device holds a copy of one float32 table.
        crc = _table_crc(self.size, self.table_seed, self.chunk)
        return f"pool/v{POOL_VERSION}/{self.size}/{self.table_seed}/{crc:08x}/{ROUNDING_VERSION}"


def require_same_stream(expected: str, got: str, who: str) -> None:
    """Refuse to mix direction streams: seeds from `who` would rebuild a different z here."""
    if expected != got:
        raise ZofedError(
            f"{who} draws directions from stream '{got}' but the server replays '{expected}'; "
            "use directions=pool (portable across devices) or run every party on the same device kind"
        )


DIRECTION_SAMPLERS: dict[str, type] = {GaussianDirections.name: GaussianDirections, PoolDirections.name: PoolDirections}


def make_directions(name: str, pool_size: int = DEFAULT_POOL_SIZE) -> DirectionSampler:
    if name == PoolDirections.name:
        return PoolDirections(pool_size)
    try:
        return DIRECTION_SAMPLERS[name]()
    except KeyError:
        known = ", ".join(sorted(DIRECTION_SAMPLERS))
        raise ValueError(f"unknown direction sampler '{name}'; use one of: {known}") from None
