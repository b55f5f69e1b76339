import pytest

from zofed.algorithms import ALGORITHMS, AlgorithmEntry, get_algorithm, register
from zofed.errors import ZofedError


def test_registry_refuses_duplicates():
    entry = ALGORITHMS["fedmezo"]
    with pytest.raises(ValueError, match="already registered"):
        register(AlgorithmEntry(entry.name, "dup", entry.settings, entry.build))


def test_unknown_algorithm_is_a_user_error():
    with pytest.raises(ZofedError, match="fedmezo"):
        get_algorithm("fedmezzo")


def test_settings_reject_unknown_keys():
    with pytest.raises(Exception):
        ALGORITHMS["fedmezo"].settings(learning_rate=1.0)
