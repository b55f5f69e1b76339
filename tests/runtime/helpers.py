"""Small configs on tiny-llama shared by runtime and conformance tests."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from zofed.config import RunConfig, parse_config

# Per-algorithm settings under which a few rounds visibly lower the loss of tiny-llama on the
# built-in task. Every registered algorithm must have an entry (the conformance suite checks).
CONFORMANCE_SETTINGS: dict[str, dict] = {
    "fedmezo": {"lr": 0.005, "mu": 1e-3},
    "fedavg": {"lr": 5e-3, "optimizer": "adamw"},
    "fedkseed": {"lr": 0.005, "mu": 1e-3, "num_seeds": 64},
    "fedkseed-pro": {"lr": 0.005, "mu": 1e-3, "num_seeds": 64},
    "decomfl": {"lr": 0.005, "mu": 1e-3},
    "gamlpp": {"lr": 0.005, "mu": 1e-3, "server_optimizer": {"name": "adam", "lr": 1e-2}},
    "fedspzo": {"lr": 0.0125, "mu": 1e-3, "p2": 2},
    # A given profile keeps the suite fast; tests/runtime/test_prepare.py measures one.
    "zorba": {"lr": 0.005, "mu": 1e-3,
              "memory_profile": {"base_mb": 600.0, "block_mb": [0.1] * 4, "block_params": [896] * 4}},
    # b = 4 directions averaged a step (forward estimator: 5 forwards a step): measured final/initial eval loss
    # 0.9888 at lr 0.02 over 6 local steps (0.9881 at lr 0.01 over 10, 0.9910 at lr 0.005 over 10).
    "fedzo": {"lr": 0.02, "mu": 1e-3},
}
# FedSPZO spends 2·P2 + 2·P1 + 1 = 7 forwards a step (MeZO 2): 8 steps at a larger lr lower the loss as clearly
# (measured: -1.1% of the initial eval loss over 3 rounds) for 40% of the forwards of the default 20.
# FedZO with b = 4 spends 5 forwards a step: 6 steps are 30 forwards, fewer than MeZO's 20 steps (40).
LOCAL_STEPS = {"fedspzo": 8, "fedzo": 6}


def tiny_config(tmp_path: Path, algorithm: str = "fedmezo", *overrides: str, **sections) -> RunConfig:
    raw = {
        "name": f"test-{algorithm}",
        "seed": 7,
        "rounds": 3,
        "model": "tiny-llama",
        "task": "builtin",
        "algorithm": algorithm,
        "clients": 2,
        "output_dir": str(tmp_path / "runs"),
        "data": {"limit": 240, "val_size": 24, "test_size": 24},
        "partition": {"method": "iid"},
        "local": {"local_steps": LOCAL_STEPS.get(algorithm, 20), "batch_size": 4},
        "eval": {"val_examples": 24, "test_examples": 24, "accuracy_examples": 4, "max_new_tokens": 3},
        "trainable": {"mode": "lora", "r": 4, "alpha": 8},
        algorithm: CONFORMANCE_SETTINGS[algorithm],
    }
    raw.update(sections)
    return parse_config(raw, list(overrides))


def final_weights(config: RunConfig):
    return load_file(str(config.run_dir / "final.safetensors"))
