"""The one error type a user sees.

Raised for bad input anywhere (config, data, model name, partition). The CLI prints its
message as a single line and exits with code 2; the message names the problem and the fix.
"""


class ZofedError(ValueError):
    """A user-facing error: one line saying what is wrong and how to fix it."""
