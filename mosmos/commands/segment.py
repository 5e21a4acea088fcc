"""`mosmos segment`: organs named by tags -> a label map (and attention maps, volumes) on the input's grid."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from ..errors import MosmosError
from ..files.events import EventLog, progress_bar
from ..files.outputs import check_output, check_output_folder

HELP = "segment organs named by tags in a CT/MR volume (NIfTI, NRRD or DICOM folder) with a fine-tuned model"


def add_arguments(parser) -> None:
    parser.add_argument("input", help="volume: .nii/.nii.gz, .nrrd, or a DICOM series folder")
    parser.add_argument("--model", required=True, help="MOSMOS segmentation model file")
    parser.add_argument("--tags", default=None, help='organ names, e.g. "liver, spleen, kidneys" (default: every '
                        "organ the model labels); names the model was not fine-tuned on give attention maps only")
    parser.add_argument("--output", required=True, help="label map to write: .nii.gz, .nii or .nrrd; for a DICOM "
                        "input also a DICOM SEG: a .dcm file, or a folder (the file is named by its SOP Instance UID)")
    parser.add_argument("--series", metavar="UID", help="Series Instance UID to segment when the DICOM folder holds "
                        "several series (default: the largest)")
    parser.add_argument("--attention", metavar="DIR",
                        help="write one attention map per tag into DIR: the probability that the organ wins at "
                             "each voxel (open-set tags: that the tag rather than background does), in [0, 1]")
    parser.add_argument("--attention-raw", action="store_true",
                        help="with --attention: write the raw up-sampled pixel–tag scores instead of probabilities")
    parser.add_argument("--volumes", metavar="FILE", help="organ volumes (mL) as .json or .csv")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("--overlap", type=float, default=None,
                        help="sliding-window overlap in [0, 1) (default 0.5; 0.25 with --fast)")
    parser.add_argument("--fast", action="store_true", help="quick preview: fewer, less overlapping windows, "
                        "tiling only the body's bounding box (those holding no body skipped)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="network number format: auto (default) is bf16 where the GPU or CPU computes it "
                        "natively (AMX, AVX512-BF16), fp32 elsewhere")
    parser.add_argument("--compile", default="auto", choices=("auto", "on", "off"),
                        help="torch.compile the network (measured on 2 CPU cores: a ViT-B window in 0.36-0.6 of "
                        "the time while other jobs load the machine, no net gain on an idle one; the first call "
                        "compiles, about 2 min the first time, seconds once cached): auto (default) on the CPU "
                        "when the windows left after the first would save more than a first compile costs; "
                        "falls back to uncompiled where compiling fails")
    parser.add_argument("--json-progress", action="store_true", help="JSON-lines progress events on stdout")


def attention_file_name(tag: str, output: str) -> str:
    from ..inference.dicomseg import is_seg_output

    # Next to a DICOM SEG the maps are DICOM Parametric Maps; otherwise they follow the label map's format.
    ext = ".dcm" if is_seg_output(output) else ".nrrd" if str(output).lower().endswith(".nrrd") else ".nii.gz"
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


def check_outputs(args) -> bool:
    """Refuse, before any work, outputs that cannot be written or that would replace an input of the run or a
    file mosmos did not write (mosmos.files.outputs); True when --output is a DICOM SEG."""
    from ..inference.dicom import is_dicom_file
    from ..inference.dicomseg import check_outside_series, highdicom, is_seg_output
    from ..inference.io import output_format

    source = Path(args.input)
    inputs = (args.input, args.model)
    dicom_in = source.is_dir() or is_dicom_file(source)
    seg_out = is_seg_output(args.output)
    if seg_out and not dicom_in:
        raise MosmosError(f"{args.output}: DICOM SEG output needs a DICOM series as input, not {source.name}; "
                          "write .nii.gz or .nrrd")
    if args.series and not dicom_in:
        raise MosmosError(f"{source}: --series applies to a DICOM folder only")
    if dicom_in and source.exists():
        check_outside_series(source if source.is_dir() else source.parent, args.output, args.attention,
                             args.volumes)
    if seg_out:
        highdicom()   # a missing writer is found now, not after the inference
        if str(args.output).lower().endswith(".dcm"):
            check_output(args.output, "label map", inputs)
        else:
            check_output_folder(args.output, inputs)   # the file is named by its new SOP Instance UID
    else:
        output_format(args.output)
        check_output(args.output, "label map", inputs)
    if args.volumes:
        if not args.volumes.lower().endswith((".json", ".csv")):
            raise MosmosError(f"{args.volumes}: --volumes must end with .json or .csv")
        check_output(args.volumes, "organ volumes", inputs, others=[args.output])
    if args.attention:
        check_output_folder(args.attention, inputs)
    return seg_out


def run(args) -> int:
    from ..train.config import check_number

    if args.overlap is not None:  # None: the mode's default (segmenter.OVERLAP or FAST_OVERLAP)
        check_number("overlap", args.overlap)
    from pydicom.uid import generate_uid

    from ..inference import Segmenter  # torch: only once the options are known to be valid
    from ..inference.allocator import keep_window_buffers
    from ..inference.dicomseg import attention_dataset, check_referencable, seg_file, segmentation_dataset
    from ..inference.io import StagedWriter, read_volume

    seg_out = check_outputs(args)
    if args.attention_raw and not args.attention:
        raise MosmosError("--attention-raw needs --attention DIR (where the maps go)")
    if seg_out and args.attention_raw:
        raise MosmosError("--attention-raw: DICOM parametric maps hold probabilities in [0, 1]; "
                          "write raw scores with a .nii.gz or .nrrd --output")
    events = EventLog("-" if args.json_progress else None)
    volume = read_volume(args.input, args.series)
    for note in getattr(volume.source, "notices", []):
        print(f"mosmos segment: note: {note}", file=sys.stderr)
    if seg_out:
        check_referencable(volume.source)   # before the inference, not after it
    keep_window_buffers()  # this process is ours: reuse each window's activations (allocator.py)
    segmenter = Segmenter(args.model, device=args.device)
    bar = progress_bar(0, "segment", enabled=None if not args.json_progress else False)

    def progress(done: int, total: int) -> bool:
        bar.total = total
        bar.n = done
        bar.refresh()
        events.emit("progress", done=done, total=total)
        return True

    def status(message: str) -> None:
        print(f"mosmos segment: {message}", file=sys.stderr, flush=True)
        events.emit("status", message=message)

    try:
        result = segmenter.segment(volume.array, volume.affine, tags=args.tags, progress=progress,
                                   overlap=args.overlap, modality=volume.modality, source=str(args.input),
                                   attention_raw=args.attention_raw, fast=args.fast, precision=args.precision,
                                   compile=args.compile, status=status)
    finally:
        bar.close()
    events.emit("run", **result.run)
    run = result.run
    print(f"mosmos segment: {run['windows']} windows in {run['precision']}{', compiled' if run['compiled'] else ''} "
          f"(overlap {run['overlap']}), "
          f"{run['windows_skipped']} outside the body skipped", file=sys.stderr)
    for note in result.notices:
        print(f"mosmos segment: warning: {note}", file=sys.stderr)
        events.emit("notice", message=note)

    attention_files = {}
    if args.attention:  # their names follow from the tags, known only now; still nothing is written yet
        for tag in result.attention:
            attention_files[tag] = attention_file_name(tag, args.output)
            check_output(Path(args.attention) / attention_files[tag], "attention map", (args.input, args.model),
                         others=[args.output, args.volumes])
    output = args.output
    with StagedWriter() as writer:
        if seg_out:
            dataset = segmentation_dataset(volume.source, result.labelmap, result.organs, args.model)
            output = seg_file(args.output, dataset)
            writer.dataset(output, dataset)
        else:
            writer.volume(args.output, result.labelmap, result.affine, "label map")
        maps_series = generate_uid() if seg_out else None   # one series holds the run's maps
        for number, (tag, name) in enumerate(attention_files.items(), 1):
            if seg_out:
                writer.dataset(Path(args.attention) / name, attention_dataset(
                    volume.source, tag, result.attention[tag], args.model, maps_series, number))
            else:
                writer.volume(Path(args.attention) / name, result.attention[tag], result.affine, "attention map")
        if args.volumes:
            writer.text(args.volumes, volumes_text(args.volumes, result, attention_files))
        writer.commit()
    if not args.json_progress:
        for o in result.organs:
            print(f"{o['name']}: {o['volume_ml']:.1f} mL (label {o['label']})")
        if seg_out:
            print(f"DICOM SEG: {output}")
    events.emit("done", output=str(output), organs=result.organs, attention=attention_files,
                notices=result.notices)
    return 0
