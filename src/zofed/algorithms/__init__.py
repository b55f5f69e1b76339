"""Federated methods behind one Protocol; importing this package registers every method once."""

from zofed.algorithms import decomfl, fedavg, fedkseed, fedmezo, fedspzo, gamlpp, zorba  # noqa: F401  (registration side effect)
from zofed.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    AlgorithmEntry,
    ClientEnv,
    Rejected,
    Sent,
    ServerState,
    Settings,
    SplitForward,
    build_algorithm,
    get_algorithm,
    register,
)

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "AlgorithmEntry",
    "ClientEnv",
    "Rejected",
    "Sent",
    "ServerState",
    "Settings",
    "SplitForward",
    "build_algorithm",
    "get_algorithm",
    "register",
]
