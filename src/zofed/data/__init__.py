"""Tasks, loaders, tokenisation, splits and partitioners."""

from zofed.data.examples import Example, TaskSpec, normalise_answer
from zofed.data.loaders import TASKS, get_task, load_examples
from zofed.data.partition import PARTITIONERS, partition, partition_table
from zofed.data.splits import Splits, split_examples
from zofed.data.tokenize import TokenizedExample, collate, encode_conversation, encode_prompt, tokenize_example

__all__ = [
    "Example",
    "PARTITIONERS",
    "Splits",
    "TASKS",
    "TaskSpec",
    "TokenizedExample",
    "collate",
    "encode_conversation",
    "encode_prompt",
    "get_task",
    "load_examples",
    "normalise_answer",
    "partition",
    "partition_table",
    "split_examples",
    "tokenize_example",
]
