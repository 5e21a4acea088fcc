"""`mosmos web`: the MOSMOSSegment workflow in a browser (trame-slicer), every tab through one port, with sign-in
anywhere but on this machine's loopback address."""

from __future__ import annotations

import getpass
import importlib.util
import os
import secrets
import sys
from pathlib import Path

from ..errors import MosmosError

HELP = "serve the segmentation workflow as a web app (needs the web extra: pip install 'mosmos[web]')"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
TOKEN_ENV = "MOSMOS_WEB_TOKEN"


def add_arguments(parser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only, no sign-in; any other "
                             "address asks for the token or, with --users, a user's password)")
    parser.add_argument("--port", type=int, default=8080,
                        help="the one port every tab goes through (default 8080)")
    parser.add_argument("--models", help="models folder (default: $MOSMOS_MODELS_DIR or ~/MOSMOS/models)")
    parser.add_argument("--data", help="server-side folder of volumes the page offers to open")
    parser.add_argument("--max-sessions", type=int, default=4, help="browser tabs served at once (default 4)")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--token", action="store_true",
                        help=f"ask for the token on 127.0.0.1 too (the token: ${TOKEN_ENV}, else one made at "
                             "start and printed)")
    choice.add_argument("--users", metavar="FILE",
                        help="sign in with a name and password from FILE (lines 'name:hash', made with "
                             "--hash-password) instead of the token")
    choice.add_argument("--no-sign-in", action="store_true",
                        help="serve a non-loopback --host without sign-in (only behind a proxy that signs users in)")
    parser.add_argument("--idle-timeout", type=float, default=30.0,
                        help="end a session when nothing has passed between it and its tab for this many minutes "
                             "(default 30)")
    parser.add_argument("--max-upload-mb", type=float, default=2048.0,
                        help="largest volume a tab may upload, in MB (default 2048); a zipped DICOM series may "
                             "unpack to 10 times that")
    parser.add_argument("--hash-password", metavar="NAME",
                        help="print a users-file line for NAME (the password is read from the terminal or "
                             "standard input) and exit")


def _users_line(name: str) -> str:
    from ..web.auth import hash_password

    if ":" in name or not name.strip():
        raise MosmosError(f"--hash-password {name!r}: a user name must be non-empty and without ':'")
    password = getpass.getpass(f"password for {name}: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if not password:
        raise MosmosError("--hash-password: empty password")
    return f"{name}:{hash_password(password)}"


def sign_in(args):
    """The SignIn the options ask for (None: no sign-in), and the address line to print."""
    from ..web.auth import SignIn, read_users

    address = f"http://{args.host}:{args.port}/"
    if args.users:
        return SignIn(users=read_users(args.users)), f"{address} (sign in with a name and password from {args.users})"
    if args.no_sign_in or (args.host in LOOPBACK and not args.token):
        reach = "this machine only" if args.host in LOOPBACK else "other machines too, WITHOUT sign-in"
        return None, f"{address} ({reach})"
    token = os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(24)
    return SignIn(token=token), f"{address}?token={token} (open this address once; the token is the sign-in)"


def run(args) -> int:
    if args.hash_password is not None:
        print(_users_line(args.hash_password))
        return 0
    missing = [m for m in ("trame_slicer", "slicer", "aiohttp") if importlib.util.find_spec(m) is None]
    if missing:
        raise MosmosError(f"{', '.join(missing)} not installed; install the web extra: pip install 'mosmos[web]'")
    if not 0 < args.port < 65536:
        raise MosmosError(f"--port {args.port}: expected 1..65535")
    if args.max_sessions < 1:
        raise MosmosError(f"--max-sessions {args.max_sessions}: expected at least 1")
    for option, value in (("--idle-timeout", args.idle_timeout), ("--max-upload-mb", args.max_upload_mb)):
        if not value > 0:
            raise MosmosError(f"{option} {value}: expected a positive number")
    for option, folder in (("--models", args.models), ("--data", args.data)):
        if folder and not Path(folder).is_dir():
            raise MosmosError(f"{folder}: {option} is not a folder")
    from ..web.launcher import Launcher

    sign_in_rules, address = sign_in(args)
    print(f"mosmos web: serving {address}; each tab gets its own session", flush=True)
    Launcher(args.host, args.port, args.models and str(Path(args.models).resolve()),
             args.data and str(Path(args.data).resolve()), args.max_sessions, sign_in_rules=sign_in_rules,
             idle_timeout=args.idle_timeout * 60, max_upload_mb=args.max_upload_mb).run()
    return 0
