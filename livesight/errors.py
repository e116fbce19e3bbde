"""The one error type front ends turn into a clear message and exit code 2."""


class InputError(ValueError):
    """Bad user input (a source, a model, a flag): the message names the input and the fix."""
