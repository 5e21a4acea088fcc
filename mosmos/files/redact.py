"""URLs as they may be shown: every message, log line, cases.csv row and event that names a server goes through
``shown_url``, so that user info (``user:password@``) typed into a URL is never printed, whatever else refuses it."""

from __future__ import annotations


def shown_url(url) -> str:
    """``url`` without its user info: everything between the scheme's ``//`` (or the start, for a URL typed
    without a scheme) and the last ``@``. That is what urllib takes for user info, and more where a password
    holds an unescaped ``/``, ``?`` or ``#`` (urllib would read the rest as the path): better a shortened address
    than a printed password."""
    text = str(url)
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    _, at, address = rest.rpartition("@")
    return f"{scheme}{sep}{address}" if at else text


def has_user_info(url) -> bool:
    return shown_url(url) != str(url)
