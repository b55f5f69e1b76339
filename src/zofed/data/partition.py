"""Split training examples across clients: iid, dirichlet, meta (by category), pathological.

Each partitioner returns, per client, sorted indices into the label list; every index goes to
exactly one client and no client is empty (or a one-line error says how to fix the request).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from zofed.errors import ZofedError

DIRICHLET_ATTEMPTS = 100


def _check(labels: Sequence[str | None], num_clients: int) -> None:
    if num_clients < 1:
        raise ZofedError(f"clients must be at least 1, got {num_clients}")
    if num_clients > len(labels):
        raise ZofedError(
            f"cannot split {len(labels)} training examples across {num_clients} clients; use fewer clients or more data"
        )


def _need_labels(labels: Sequence[str | None], method: str) -> None:
    if any(label is None for label in labels):
        raise ZofedError(f"partition.method={method} needs a category for every example, and this task has none; use partition.method=iid")


def _finish(parts: list[list[int]], method: str) -> list[list[int]]:
    empty = [client for client, part in enumerate(parts) if not part]
    if empty:
        raise ZofedError(
            f"partition.method={method} leaves client(s) {empty[:5]} without data; use fewer clients, a larger "
            "partition.alpha, or more data"
        )
    return [sorted(int(i) for i in part) for part in parts]


def iid(labels, num_clients, seed, **_) -> list[list[int]]:
    order = np.random.default_rng(seed).permutation(len(labels))
    return _finish([list(chunk) for chunk in np.array_split(order, num_clients)], "iid")


def dirichlet(labels, num_clients, seed, *, alpha: float = 0.5, **_) -> list[list[int]]:
    """Per label, client shares ~ Dir(alpha); redrawn (deterministically) until no client is empty."""
    _need_labels(labels, "dirichlet")
    rng = np.random.default_rng(seed)
    by_label = _indices_by_label(labels)
    for _attempt in range(DIRICHLET_ATTEMPTS):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for label in sorted(by_label):
            indices = rng.permutation(by_label[label])
            shares = rng.dirichlet([alpha] * num_clients)
            cuts = (np.cumsum(shares)[:-1] * len(indices)).astype(int)
            for client, chunk in enumerate(np.split(indices, cuts)):
                parts[client].extend(chunk.tolist())
        if all(parts):
            return _finish(parts, "dirichlet")
    return _finish(parts, "dirichlet")


def meta(labels, num_clients, seed, **_) -> list[list[int]]:
    """By category. With at least as many categories as clients, whole categories go to the least-loaded
    client, largest first; with fewer, categories are split across clients in proportion to their size.
    No category is dropped."""
    _need_labels(labels, "meta")
    rng = np.random.default_rng(seed)
    by_label = {label: rng.permutation(idx).tolist() for label, idx in sorted(_indices_by_label(labels).items())}
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    if len(by_label) >= num_clients:
        for label in sorted(by_label, key=lambda l: (-len(by_label[l]), l)):
            target = min(range(num_clients), key=lambda c: (len(parts[c]), c))
            parts[target].extend(by_label[label])
        return _finish(parts, "meta")
    # Fewer categories than clients: give each category a number of clients proportional to its size.
    sizes = {label: len(idx) for label, idx in by_label.items()}
    seats = {label: 1 for label in by_label}
    for _ in range(num_clients - len(by_label)):
        label = max(sorted(seats), key=lambda l: sizes[l] / seats[l])
        seats[label] += 1
    client = 0
    for label in sorted(by_label):
        for chunk in np.array_split(np.array(by_label[label]), seats[label]):
            parts[client].extend(chunk.tolist())
            client += 1
    return _finish(parts, "meta")


def pathological(labels, num_clients, seed, *, labels_per_client: int = 2, **_) -> list[list[int]]:
    """Shards: sort by label, cut into num_clients·k shards, give each client k shards."""
    _need_labels(labels, "pathological")
    rng = np.random.default_rng(seed)
    order = sorted(range(len(labels)), key=lambda i: (labels[i], i))
    shards = np.array_split(np.array(order), num_clients * labels_per_client)
    shard_order = rng.permutation(len(shards))
    parts = [[] for _ in range(num_clients)]
    for position, shard in enumerate(shard_order):
        parts[position % num_clients].extend(shards[shard].tolist())
    return _finish(parts, "pathological")


PARTITIONERS: dict[str, Callable[..., list[list[int]]]] = {
    "iid": iid,
    "dirichlet": dirichlet,
    "meta": meta,
    "pathological": pathological,
}


def partition(
    method: str,
    labels: Sequence[str | None],
    num_clients: int,
    seed: int,
    *,
    alpha: float = 0.5,
    labels_per_client: int = 2,
) -> list[list[int]]:
    if method not in PARTITIONERS:
        raise ZofedError(f"unknown partition method '{method}'; use one of: {', '.join(PARTITIONERS)}")
    _check(labels, num_clients)
    return PARTITIONERS[method](labels, num_clients, seed, alpha=alpha, labels_per_client=labels_per_client)


def partition_table(labels: Sequence[str | None], parts: list[list[int]]) -> list[dict]:
    return [
        {"client": client, "size": len(part), "labels": dict(Counter(str(labels[i]) for i in part))}
        for client, part in enumerate(parts)
    ]


def _indices_by_label(labels: Sequence[str | None]) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        grouped[str(label)].append(index)
    return grouped
