"""The byte ledger: every message counted as the codec encoded it, per client and direction."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from zofed.runtime.codec import EncodedSizes


@dataclass
class ByteLedger:
    """Bytes as encoded, per client, per direction ("up"/"down") and per kind."""

    rows: list[dict] = field(default_factory=list)

    def record(self, client: int, direction: str, sizes: EncodedSizes) -> None:
        self.rows.append(
            {
                "client": client,
                "direction": direction,
                "total": sizes.total,
                "weights": sizes.weights,
                "records": sizes.records,
                "metrics": sizes.metrics,
                "control": sizes.control,
            }
        )

    def total(self, direction: str) -> int:
        return sum(row["total"] for row in self.rows if row["direction"] == direction)

    def by_kind(self, direction: str) -> dict[str, int]:
        kinds: dict[str, int] = defaultdict(int)
        for row in self.rows:
            if row["direction"] == direction:
                for kind in ("weights", "records", "metrics", "control"):
                    kinds[kind] += row[kind]
        return dict(kinds)

    def for_client(self, client: int, direction: str) -> int:
        return sum(r["total"] for r in self.rows if r["client"] == client and r["direction"] == direction)
