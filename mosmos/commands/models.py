"""`mosmos models list | add | pull | remove | index` on the models folder the Slicer module uses."""

from __future__ import annotations

import argparse
import json

HELP = "list, add, pull (download, resumable, verified), remove the installed models; write a model index"


def add_arguments(p) -> None:
    from ..files.model_store import ENV_MODELS_DIR

    p.add_argument("--folder", default=None,
                   help=f"models folder (default ${ENV_MODELS_DIR}, else ~/MOSMOS/models)")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    s = sub.add_parser("list", help="the installed models: name, kind, modality, organs, size, mean Dice")
    s.add_argument("--json", action="store_true", help="as JSON, with each model's card summary")
    s = sub.add_parser("add", help="verify a model file and copy it in")
    s.add_argument("file", help="the model file to verify and copy in")
    s.add_argument("--name", default=None, help="file name in the folder (default: the file's own)")
    s.add_argument("--force", action="store_true", help="replace a model of the same name")
    s = sub.add_parser("pull", help="download a model (URL, or --index INDEX NAME), resume, verify, install")
    s.add_argument("source", help="the model's URL, or with --index the model's name in the index")
    s.add_argument("--index", default=None, help="a model index (JSON file or URL) listing the model")
    s.add_argument("--sha256", default=None, help="the expected SHA-256 of the file")
    s.add_argument("--name", default=None, help="file name in the folder (default: the URL's)")
    s.add_argument("--force", action="store_true", help="replace a model of the same name")
    s.add_argument("--json-progress", action="store_true", help="JSON-lines progress events on stdout")
    s = sub.add_parser("remove", help="delete an installed model")
    s.add_argument("name", help="the installed model's file name (as `mosmos models list` shows it)")
    s = sub.add_parser("index", help="write a model index of model files, to publish next to them")
    s.add_argument("files", nargs="+", help="the model files the index lists")
    s.add_argument("--base-url", default="", help="URL prefix of the files (default: relative to the index)")
    s.add_argument("--out", required=True, help="the index file to write (JSON)")
    # the options shared by every action may also come after it ("mosmos models list --folder DIR")
    for action in sub.choices.values():
        action.add_argument("--folder", default=argparse.SUPPRESS, help="models folder")


def run(args) -> int:
    from ..files import model_store as store

    folder = args.folder
    if args.action == "list":
        found = store.list_models(folder, kind=None)
        if args.json:
            print(json.dumps([m.as_json() for m in found], indent=2))
            return 0
        if not found:
            print(f"no models in {folder or store.default_models_dir()}")
        for m in found:
            dice = f"{m.mean_dice:.3f}" if m.mean_dice is not None else "-"
            print(f"{m.name}  {m.kind}  {m.modality or '-'}  {m.size / 1e6:.1f} MB  Dice {dice}  "
                  f"organs: {', '.join(m.organs) or '-'}")
    elif args.action == "add":
        info = store.add_model_file(args.file, folder, name=args.name, force=args.force)
        print(f"added {info.path}")
    elif args.action == "remove":
        print(f"removed {store.remove_model(args.name, folder)}")
    elif args.action == "index":
        from ..files.atomic import atomic_write_bytes

        index = store.make_index(args.files, args.base_url)
        atomic_write_bytes(args.out, (json.dumps(index, indent=2) + "\n").encode())
        print(f"index of {len(index['models'])} models: {args.out}")
    else:
        return _pull(args, store)
    return 0


def _pull(args, store) -> int:
    from ..errors import MosmosError
    from ..files.events import EventLog, progress_bar

    events = EventLog("-" if args.json_progress else None)
    bar = progress_bar(0, "download", enabled=False if args.json_progress else None)
    bar.unit, bar.unit_scale, bar.unit_divisor = "B", True, 1024
    last = [0]

    def progress(done: int, total: int) -> None:
        bar.total, bar.n = total or None, done
        bar.refresh()
        if done - last[0] >= (1 << 22) or done == total:  # an event per 4 MB is plenty for a progress bar
            last[0] = done
            events.emit("progress", done=done, total=total)

    try:
        if args.index:
            if args.sha256 or args.name:
                raise MosmosError("--sha256 and --name come from the index entry; give them only with a URL")
            info = store.pull_from_index(args.index, args.source, args.folder, force=args.force, progress=progress)
        else:
            info = store.pull_model(args.source, args.folder, sha256=args.sha256, name=args.name, force=args.force,
                                    progress=progress)
    finally:
        bar.close()
    events.emit("done", path=str(info.path))
    if not args.json_progress:
        print(f"installed {info.path}")
    return 0
