"""`zofed export`: a run's weights as a PEFT adapter or a merged model that loads without zofed.

The adapter is written by PEFT itself (`save_pretrained`), so its key names and
`adapter_config.json` are whatever the installed PEFT reads back; zofed only fills in where the
base model lives, which for a built-in model is zofed's cache (the exact weights the run trained on:
the built-in SmolLM2 is de-quantised from a Q4_1 GGUF file, so the hub's own weights differ slightly).
The hub id of a built-in model is named in the model card and in zofed_export.json, and no
GGUF-internal name is carried into a merged model's config.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from zofed.errors import ZofedError
from zofed.llm import GGUF_CONFIG_KEYS, base_model_hub_id, base_model_path
from zofed.runtime.saved_run import load_run_model, open_run

FORMATS = ("peft", "merged")
ADAPTER_NAME = "default"  # PEFT's name for the one adapter get_peft_model adds
EXPORT_RECORD = "zofed_export.json"


def export_run(run_dir: Path, out: Path, weights: str = "final", format: str | None = None) -> dict:
    """Write the run's `weights` to `out` as `format` (default: peft for LoRA runs, merged for full ones)."""
    config, weights_file = open_run(run_dir, weights)
    lora = config.trainable.mode == "lora"
    format = format or ("peft" if lora else "merged")
    if format not in FORMATS:
        raise ZofedError(f"unknown export format '{format}'; use one of {', '.join(FORMATS)}")
    if format == "peft" and not lora:
        raise ZofedError(f"run '{run_dir}' trained the full parameters, so it has no adapter; export with --format merged")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ZofedError(f"export target '{out}' already exists and is not empty; pass a new --out directory or remove it")
    base = base_model_path(config.model) if format == "peft" else None

    loaded, _ = load_run_model(config, weights_file)
    model = loaded.model
    # The runtime turns the KV cache off for training forwards; a user of the export generates.
    model.config.use_cache = True
    record = {
        "run": str(run_dir.resolve()),
        "weights": weights,
        "format": format,
        "model": config.model,
        "base_model": base,
        "base_model_hub_id": base_model_hub_id(config.model),
        "task": config.task,
        "system_prompt": config.data.system_prompt,
        "dtype": config.dtype,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed into place: a failed export leaves no half directory.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if format == "peft":
            model.peft_config[ADAPTER_NAME].base_model_name_or_path = base
            model.save_pretrained(staging)
            _name_hub_base(staging / "README.md", record["base_model_hub_id"])
        else:
            merged = model.merge_and_unload() if lora else model
            for key in GGUF_CONFIG_KEYS:
                merged.config.__dict__.pop(key, None)
            merged.save_pretrained(staging)
        loaded.tokenizer.save_pretrained(staging)
        (staging / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if out.is_dir():
            out.rmdir()  # empty, checked above
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return record | {"out": str(out)}


def _name_hub_base(card: Path, hub_id: str | None) -> None:
    """PEFT's model card names the base by the path it loads from (zofed's cache): name the hub model instead."""
    if hub_id is None or not card.is_file():
        return
    lines = card.read_text().splitlines(keepends=True)
    card.write_text("".join(f"base_model: {hub_id}\n" if line.startswith("base_model:") else line for line in lines))
