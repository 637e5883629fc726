"""The one exception type that the CLI turns into a one-line message and exit status 2."""


class W2vtkError(Exception):
    """A problem with the user's input: a file, a config value, a checkpoint.

    The message names the offending file or value and says how to fix it. The CLI prints it
    as a single line, without a traceback, and exits with status 2.
    """
