"""User-facing errors: one line that names the file and the problem."""


class MosmosError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""
