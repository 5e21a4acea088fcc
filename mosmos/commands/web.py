"""`mosmos web`: the MOSMOSSegment workflow in a browser (trame-slicer), one session process per tab."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import MosmosError

HELP = "serve the segmentation workflow as a web app (needs the web extra: pip install 'mosmos[web]')"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_arguments(parser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 serves every "
                             "network the machine is on, without authentication)")
    parser.add_argument("--port", type=int, default=8080, help="port of the page to open (default 8080)")
    parser.add_argument("--models", help="models folder (default: $MOSMOS_MODELS_DIR or ~/MOSMOS/models)")
    parser.add_argument("--data", help="server-side folder of volumes the page offers to open")
    parser.add_argument("--max-sessions", type=int, default=4, help="browser tabs served at once (default 4)")


def run(args) -> int:
    missing = [m for m in ("trame_slicer", "slicer", "aiohttp") if importlib.util.find_spec(m) is None]
    if missing:
        raise MosmosError(f"{', '.join(missing)} not installed; install the web extra: pip install 'mosmos[web]'")
    if not 0 < args.port < 65536:
        raise MosmosError(f"--port {args.port}: expected 1..65535")
    if args.max_sessions < 1:
        raise MosmosError(f"--max-sessions {args.max_sessions}: expected at least 1")
    for option, folder in (("--models", args.models), ("--data", args.data)):
        if folder and not Path(folder).is_dir():
            raise MosmosError(f"{folder}: {option} is not a folder")
    from ..web.launcher import Launcher

    reach = "this machine only" if args.host in LOOPBACK else "other machines too, without authentication"
    print(f"mosmos web: serving http://{args.host}:{args.port}/ ({reach}; each tab gets its own session)",
          flush=True)
    Launcher(args.host, args.port, args.models and str(Path(args.models).resolve()),
             args.data and str(Path(args.data).resolve()), args.max_sessions).run()
    return 0
