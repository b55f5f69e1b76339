"""Federated methods behind one Protocol, registered here: one line per method in `METHODS`."""

from zofed.algorithms import decomfl, fedavg, fedkseed, fedmezo, fedspzo, fedzo, gamlpp, zorba
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
from zofed.algorithms.settings import ZOSettings

# The registry: one line per method (a module may hold two, as FedKSeed and its Pro variant); `register` refuses a name twice.
METHODS: tuple[AlgorithmEntry, ...] = (
    fedavg.ENTRY,
    fedmezo.ENTRY,
    fedkseed.ENTRY,
    fedkseed.PRO_ENTRY,
    decomfl.ENTRY,
    fedspzo.ENTRY,
    zorba.ENTRY,
    gamlpp.ENTRY,
    fedzo.ENTRY,
)
for _entry in METHODS:
    register(_entry)

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "AlgorithmEntry",
    "ClientEnv",
    "METHODS",
    "Rejected",
    "Sent",
    "ServerState",
    "Settings",
    "SplitForward",
    "ZOSettings",
    "build_algorithm",
    "get_algorithm",
    "register",
]
