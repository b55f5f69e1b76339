"""ZorBA block assignment: which client trains which block (pure numpy).

Choices where the paper is silent (DESIGN.md §4 ZorBA is our definition):

* Convergence proxy. Client n training blocks a_n has active dimension
  d_n = sum_l a_nl * size_l; its ZO estimate's variance grows with d_n. Block l,
  averaged over the c_l = sum_n a_nl clients covering it, has variance proxy
  sum_{n covers l} d_n / c_l**2. A block nobody trains costs `uncovered_penalty`
  (default: total model size, larger than any covered block's proxy):

      B(a) = sum_l [c_l > 0] * sum_{n: a_nl=1} d_n / c_l**2 + [c_l = 0] * penalty

* Memory: V_n(a_n) = base_n + sum_l a_nl * m_l, must be <= budget_n.
* Lexicographic epsilon-constraint: B* = min B under budgets; then minimise total
  memory sum_n V_n subject to B <= (1 + eps) * B*.
* Exact by enumeration when 2**(N*L) <= `exact_limit`; otherwise greedy
  (add the block that lowers B most per byte, while it fits) then local search
  (single-bit flips that improve the lexicographic objective) until no flip helps.
"""

from __future__ import annotations

import itertools

import numpy as np

from zofed.errors import ZofedError


def proxy(a: np.ndarray, sizes: np.ndarray, penalty: float | np.ndarray | None = None) -> float:
    """B(a); `penalty` is one value for every uncovered block or one per block."""
    a = np.asarray(a, dtype=bool)
    sizes = np.asarray(sizes, dtype=float)
    pen = np.broadcast_to(np.asarray(sizes.sum() if penalty is None else penalty, float), (a.shape[1],))
    d = a.astype(float) @ sizes
    c = a.sum(axis=0)
    total = 0.0
    for l in range(a.shape[1]):
        if c[l] == 0:
            total += float(pen[l])
        else:
            total += float(d[a[:, l]].sum()) / c[l] ** 2
    return total


def memory(a: np.ndarray, base: np.ndarray, block_mem: np.ndarray) -> np.ndarray:
    return np.asarray(base, float) + np.asarray(a, float) @ np.asarray(block_mem, float)


def _check(base, budgets, block_mem):
    for n, (b, v) in enumerate(zip(base, budgets)):
        if b + float(np.min(block_mem)) > v:
            raise ZofedError(
                f"zorba: client {n} budget {v:.1f} MB cannot hold even one block "
                f"(needs {b + float(np.min(block_mem)):.1f} MB); raise its budget or drop the client")


def solve(sizes, block_mem, base, budgets, eps: float = 0.0,
          penalty: float | np.ndarray | None = None, exact_limit: int = 2 ** 16) -> np.ndarray:
    """Return a bool (N, L) assignment; every client trains at least one block."""
    sizes = np.asarray(sizes, float)
    block_mem = np.asarray(block_mem, float)
    base = np.asarray(base, float)
    budgets = np.asarray(budgets, float)
    n_clients, n_blocks = len(base), len(sizes)
    _check(base, budgets, block_mem)
    if 2 ** (n_clients * n_blocks) <= exact_limit:
        return _exact(sizes, block_mem, base, budgets, eps, penalty)
    return _heuristic(sizes, block_mem, base, budgets, eps, penalty)


def _feasible(a, block_mem, base, budgets):
    return bool(np.all(a.any(axis=1)) and np.all(memory(a, base, block_mem) <= budgets + 1e-9))


def _exact(sizes, block_mem, base, budgets, eps, penalty):
    n, l = len(base), len(sizes)
    cands = []
    for bits in itertools.product((False, True), repeat=n * l):
        a = np.array(bits, bool).reshape(n, l)
        if _feasible(a, block_mem, base, budgets):
            cands.append((proxy(a, sizes, penalty), float(memory(a, base, block_mem).sum()), a))
    best_b = min(c[0] for c in cands)
    ok = [c for c in cands if c[0] <= (1 + eps) * best_b + 1e-9]
    return min(ok, key=lambda c: (c[1], c[0]))[2]


def _heuristic(sizes, block_mem, base, budgets, eps, penalty):
    n, l = len(base), len(sizes)
    a = np.zeros((n, l), bool)
    for i in range(n):  # every client starts on its cheapest block
        a[i, int(np.argmin(block_mem))] = True
    while True:  # greedy: best proxy decrease per byte among feasible additions
        cur = proxy(a, sizes, penalty)
        best, move = 0.0, None
        for i, j in zip(*np.nonzero(~a)):
            a[i, j] = True
            if _feasible(a, block_mem, base, budgets):
                gain = (cur - proxy(a, sizes, penalty)) / block_mem[j]
                if gain > best:
                    best, move = gain, (i, j)
            a[i, j] = False
        if move is None:
            break
        a[move] = True
    a = _local(a, lambda x: (proxy(x, sizes, penalty),), block_mem, base, budgets)
    best_b = proxy(a, sizes, penalty)
    bound = (1 + eps) * best_b + 1e-9
    return _local(a, lambda x: ((0.0 if proxy(x, sizes, penalty) <= bound else 1.0),
                                float(memory(x, base, block_mem).sum())), block_mem, base, budgets)


def _local(a, key, block_mem, base, budgets):
    """Coordinate descent over clients: re-choose one client's whole block set
    (all 2**L subsets when L <= 12, else single-bit flips) while the key improves."""
    n_blocks = a.shape[1]
    rows = ([np.array(b, bool) for b in itertools.product((False, True), repeat=n_blocks)]
            if n_blocks <= 12 else None)
    improved = True
    while improved:
        improved = False
        cur = key(a)
        for i in range(a.shape[0]):
            options = rows if rows is not None else [
                np.where(np.arange(n_blocks) == j, ~a[i], a[i]) for j in range(n_blocks)]
            for row in options:
                old = a[i].copy()
                a[i] = row
                if _feasible(a, block_mem, base, budgets) and key(a) < cur:
                    cur, improved = key(a), True
                else:
                    a[i] = old
    return a
