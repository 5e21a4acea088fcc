"""User-facing errors: one line that names the file and the problem."""


class MosmosError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""


def shorten(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis, for echoing what a user typed in one line."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit - 1]}…"
