"""The dtype names a config may use, in one table: a leaf that torch-only code (algorithms) and
the transformers glue (llm) both import."""

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
