import pytest

from zofed.algorithms import ALGORITHMS, AlgorithmEntry, get_algorithm, register
from zofed.errors import ZofedError


def test_registry_refuses_duplicates():
    entry = ALGORITHMS["fedmezo"]
    with pytest.raises(ValueError, match="already registered"):
        register(AlgorithmEntry(entry.name, "dup", entry.settings, entry.build))


def test_a_preparation_must_fill_one_of_the_methods_settings():
    from dataclasses import replace

    entry = ALGORITHMS["zorba"]
    with pytest.raises(ValueError, match="prepares 'memory_model', which is not one of its settings"):
        register(replace(entry, name="zorba-misdeclared", prepare=(replace(entry.prepare[0], fills="memory_model"),)))
    assert "zorba-misdeclared" not in ALGORITHMS


def test_unknown_algorithm_is_a_user_error():
    with pytest.raises(ZofedError, match="fedmezo"):
        get_algorithm("fedmezzo")


def test_settings_reject_unknown_keys():
    with pytest.raises(Exception):
        ALGORITHMS["fedmezo"].settings(learning_rate=1.0)
