"""`mosmos segment`: organs named by tags -> a label map (and attention maps, volumes) on the input's grid."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from ..errors import MosmosError
from ..events import EventLog, progress_bar

HELP = "segment organs named by tags in a CT/MR volume (NIfTI, NRRD or DICOM folder) with a fine-tuned model"


def add_arguments(parser) -> None:
    parser.add_argument("input", help="volume: .nii/.nii.gz, .nrrd, or a DICOM series folder")
    parser.add_argument("--model", required=True, help="MOSMOS segmentation model file")
    parser.add_argument("--tags", default=None, help='organ names, e.g. "liver, spleen, kidneys" (default: every '
                        "organ the model labels); names the model was not fine-tuned on give attention maps only")
    parser.add_argument("--output", required=True, help="label map to write: .nii.gz, .nii or .nrrd")
    parser.add_argument("--attention", metavar="DIR", help="write one attention map per tag into DIR")
    parser.add_argument("--volumes", metavar="FILE", help="organ volumes (mL) as .json or .csv")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("--overlap", type=float, default=None,
                        help="sliding-window overlap in [0, 1) (default 0.5; 0.25 with --fast)")
    parser.add_argument("--fast", action="store_true", help="quick preview: fewer, less overlapping windows")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="network number format: auto (default) is bf16 where the GPU or CPU computes it "
                        "natively (AMX, AVX512-BF16), fp32 elsewhere")
    parser.add_argument("--json-progress", action="store_true", help="JSON-lines progress events on stdout")


def attention_file_name(tag: str, output: str) -> str:
    ext = ".nrrd" if str(output).lower().endswith(".nrrd") else ".nii.gz"
    return tag.replace(" ", "_") + ext


def volumes_text(path: str, result, attention_files: dict) -> str:
    if path.lower().endswith(".json"):
        return json.dumps({"organs": result.organs, "attention": attention_files, "notices": result.notices},
                          indent=2) + "\n"
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["name", "label", "volume_ml", "r", "g", "b"])
    for o in result.organs:
        w.writerow([o["name"], o["label"], o["volume_ml"], *o["color"]])
    return buf.getvalue()


def run(args) -> int:
    from ..inference import Segmenter
    from ..inference.io import StagedWriter, check_writable, output_format, read_volume

    output_format(args.output)
    check_writable(args.output)
    if args.volumes:
        if not args.volumes.lower().endswith((".json", ".csv")):
            raise MosmosError(f"{args.volumes}: --volumes must end with .json or .csv")
        check_writable(args.volumes)
    if args.attention:
        check_writable(Path(args.attention) / "x")
    events = EventLog("-" if args.json_progress else None)
    volume = read_volume(args.input)
    segmenter = Segmenter(args.model, device=args.device)
    bar = progress_bar(0, "segment", enabled=None if not args.json_progress else False)

    def progress(done: int, total: int) -> bool:
        bar.total = total
        bar.n = done
        bar.refresh()
        events.emit("progress", done=done, total=total)
        return True

    try:
        result = segmenter.segment(volume.array, volume.affine, tags=args.tags, progress=progress,
                                   overlap=args.overlap, modality=volume.modality, source=str(args.input),
                                   fast=args.fast, precision=args.precision)
    finally:
        bar.close()
    events.emit("run", **result.run)
    run = result.run
    print(f"mosmos segment: {run['windows']} windows in {run['precision']} (overlap {run['overlap']}), "
          f"{run['windows_skipped']} outside the body skipped", file=sys.stderr)
    for note in result.notices:
        print(f"mosmos segment: warning: {note}", file=sys.stderr)
        events.emit("notice", message=note)

    attention_files = {}
    with StagedWriter() as writer:
        writer.volume(args.output, result.labelmap, result.affine)
        if args.attention:
            for tag in result.attention:
                name = attention_file_name(tag, args.output)
                writer.volume(Path(args.attention) / name, result.attention[tag], result.affine)
                attention_files[tag] = name
        if args.volumes:
            writer.text(args.volumes, volumes_text(args.volumes, result, attention_files))
        writer.commit()
    if not args.json_progress:
        for o in result.organs:
            print(f"{o['name']}: {o['volume_ml']:.1f} mL (label {o['label']})")
    events.emit("done", output=str(args.output), organs=result.organs, attention=attention_files,
                notices=result.notices)
    return 0
