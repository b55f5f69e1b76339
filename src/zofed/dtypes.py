"""The dtype names a config may use, in one table: a leaf that torch-only code (algorithms) and
the transformers glue (llm) both import."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# name -> the torch dtype's attribute; names, not dtype objects, so that reading the table (the
# registry does, through zorba.py) does not import torch
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype a config's dtype name stands for (`name` one of DTYPES)."""
    import torch

    return getattr(torch, DTYPES[name])
