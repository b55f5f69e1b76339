"""How a method weighs its clients when it averages them: each method's own official choice.

`uniform`: every replying client counts the same (FedMeZO's official code weights by H×batch,
equal for all, the paper's objective is (1/N)·Σ f_i; DeComFL averages unweighted). `examples`:
by the client's number of training examples (FedAvg; FedKSeed's server weighs by data size).
The example count a method reads is the server's own knowledge of the partition: the server's
`accept` hook puts it in `reply.metrics["num_examples"]` before `aggregate` sees the reply, so a
client cannot raise its weight by claiming more data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from zofed.messages import Message

Weighting = Literal["uniform", "examples"]
WEIGHTING_HELP = "uniform: every client counts the same; examples: by the server's count of its training examples"


def client_shares(replies: Sequence[tuple[int, Message]], weighting: Weighting) -> list[float]:
    """w_k / Σ w: each reply's share of the average, summing to 1."""
    if weighting == "uniform":
        return [1.0 / len(replies)] * len(replies)
    sizes = [float(reply.metrics["num_examples"]) for _, reply in replies]
    total = sum(sizes)
    if not total > 0:
        raise ValueError("weighting by examples needs a positive total example count")
    return [size / total for size in sizes]
