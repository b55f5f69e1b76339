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


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_official_defaults_are_the_settings_defaults_and_every_method_says_where_it_differs(name):
    entry = ALGORITHMS[name]
    fields = entry.settings.model_fields
    for key, value in entry.official_defaults.items():
        assert fields[key].default == value, f"{name}.{key}: default {fields[key].default}, official {value}"
    # with official code, its defaults are recorded; every entry says where zofed differs, one line each
    assert bool(entry.official_defaults) == ("official code" in entry.basis and "no official code" not in entry.basis)
    assert entry.differs and all(line and "\n" not in line for line in entry.differs), name


def test_fedkseed_and_decomfl_defaults_are_their_official_codes():
    # FederatedScope branch FedKSeed: main.py's zo_eps 5e-4 and K 4096, its README scripts' lr 3e-7;
    # ZidongLiu/DeComFL experiment_helper/cli_parser.py: lr 1e-4, mu 1e-3, one perturbation, rge-central
    assert ALGORITHMS["fedkseed"].official_defaults.items() >= {"lr": 3e-7, "mu": 5e-4, "num_seeds": 4096}.items()
    assert ALGORITHMS["fedkseed-pro"].official_defaults == ALGORITHMS["fedkseed"].official_defaults
    assert ALGORITHMS["decomfl"].official_defaults.items() >= {"lr": 1e-4, "mu": 1e-3, "perturbations": 1,
                                                               "estimator": "central"}.items()
