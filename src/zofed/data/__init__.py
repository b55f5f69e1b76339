"""Tasks, loaders, tokenisation, splits and partitioners."""

from zofed.data.examples import Example, TaskSpec, normalise_answer
from zofed.data.loaders import TASKS, get_task, load_examples, load_splits
from zofed.data.partition import PARTITIONERS, partition, partition_dataset, partition_table, plot_partition
from zofed.data.splits import Splits, choose_splits, split_examples
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
    "choose_splits",
    "load_examples",
    "load_splits",
    "normalise_answer",
    "partition",
    "partition_dataset",
    "plot_partition",
    "partition_table",
    "split_examples",
    "tokenize_example",
]
