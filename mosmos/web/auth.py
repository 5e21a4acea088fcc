"""Sign-in for `mosmos web`: a shared token or a users file of salted PBKDF2-SHA256 password hashes. A request
that signs in (``?token=``, a Bearer token, or HTTP Basic with a user's password) gets a cookie signed with a
secret made at start, so the page's scripts and its websocket (which carry cookies, not typed credentials)
are let in too. No aiohttp or trame here: the launcher hands over the request's headers, query and cookies."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from pathlib import Path

from mosmos.errors import MosmosError

COOKIE = "mosmos_signin"
SCHEME = "pbkdf2_sha256"
ITERATIONS = 310_000          # OWASP's 2023 figure for PBKDF2-HMAC-SHA256
COOKIE_DAYS = 7


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """``pbkdf2_sha256$<iterations>$<salt>$<hash>`` (salt and hash URL-safe base64), one users-file entry's hash."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{SCHEME}${iterations}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, iterations, salt, digest = encoded.split("$")
        if scheme != SCHEME:
            return False
        got = hashlib.pbkdf2_hmac("sha256", password.encode(), _unb64(salt), int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(got, _unb64(digest))


def read_users(path: str | Path) -> dict[str, str]:
    """``name:hash`` lines (blank lines and # comments skipped) -> {name: hash}; a malformed line is an error
    naming the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise MosmosError(f"{path}: cannot read the users file ({e})") from None
    users = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, encoded = line.partition(":")
        if not name or not encoded.startswith(SCHEME + "$") or encoded.count("$") != 3:
            raise MosmosError(f"{path}:{number}: expected 'name:{SCHEME}$...' (make one with "
                              "`mosmos web --hash-password NAME`)")
        users[name.strip()] = encoded.strip()
    if not users:
        raise MosmosError(f"{path}: the users file names no user")
    return users


class SignIn:
    """Who may use the server: everyone holding ``token``, or the ``users`` ({name: hash}) with their passwords."""

    def __init__(self, token: str | None = None, users: dict[str, str] | None = None):
        if not token and not users:
            raise ValueError("SignIn needs a token or users")
        self.token, self.users = token, users or {}
        self._secret = secrets.token_bytes(32)    # cookies die with the server that signed them

    @property
    def challenge(self) -> str | None:
        """The WWW-Authenticate value of a refusal: browsers ask users-file users for name and password."""
        return 'Basic realm="MOSMOS", charset="UTF-8"' if self.users else None

    def cookie(self, user: str, now: float | None = None) -> str:
        expires = int((now or time.time()) + COOKIE_DAYS * 86400)
        payload = f"{_b64(user.encode())}.{expires}"
        return f"{payload}.{self._sign(payload)}"

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())

    def _from_cookie(self, value: str | None) -> str | None:
        try:
            user, expires, signature = (value or "").split(".")
            if hmac.compare_digest(signature, self._sign(f"{user}.{expires}")) and int(expires) > time.time():
                return _unb64(user).decode()
        except (ValueError, UnicodeDecodeError):
            pass
        return None

    def _from_credentials(self, authorization: str, query_token: str | None) -> str | None:
        if self.token and query_token is not None and hmac.compare_digest(query_token, self.token):
            return "token"
        kind, _, value = authorization.partition(" ")
        if self.token and kind.lower() == "bearer" and hmac.compare_digest(value.strip(), self.token):
            return "token"
        if self.users and kind.lower() == "basic":
            try:
                name, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except ValueError:
                return None
            if name in self.users and verify_password(password, self.users[name]):
                return name
        return None

    def check(self, headers, query, cookies) -> tuple[str | None, str | None]:
        """(the signed-in user or None, a cookie value to set when the request signed in with credentials)."""
        user = self._from_cookie(cookies.get(COOKIE))
        if user is not None:
            return user, None
        user = self._from_credentials(headers.get("Authorization", ""), query.get("token"))
        return user, (self.cookie(user) if user is not None else None)
