"""`mosmos segment`: organs named by tags -> a label map (and attention maps, volumes) on the input's grid."""

from __future__ import annotations

import csv
import io
import json
import sys
import tempfile
import time
from pathlib import Path

from ..errors import MosmosError
from ..files.events import EventLog, progress_bar
from ..files.outputs import check_output, check_output_folder
from ..options import AUTO, COMPILE_MODES, PRECISIONS

HELP = "segment organs named by tags in a CT/MR volume (NIfTI, NRRD or DICOM folder) with a fine-tuned model"


def add_arguments(parser) -> None:
    parser.add_argument("input", nargs="?", help="volume: .nii/.nii.gz, .nrrd, or a DICOM series folder (left out "
                        "with --dicomweb or --inputs)")
    parser.add_argument("--model", required=True, help="MOSMOS segmentation model file")
    parser.add_argument("--tags", default=None, help='organ names, e.g. "liver, spleen, kidneys" (default: every '
                        "organ the model labels); names the model was not fine-tuned on give attention maps only")
    parser.add_argument("--output", help="label map to write: .nii.gz, .nii or .nrrd; for a DICOM "
                        "input also a DICOM SEG: a .dcm file, or a folder (the file is named by its SOP Instance UID)")
    parser.add_argument("--series", metavar="UID", help="Series Instance UID to segment when the DICOM folder (or "
                        "the --dicomweb study) holds several series (default: the largest)")
    parser.add_argument("--attention", metavar="DIR",
                        help="write one attention map per tag into DIR: the probability that the organ wins at "
                             "each voxel (open-set tags: that the tag rather than background does), in [0, 1] "
                             "(NIfTI: 16-bit integers with a scale factor, which readers apply)")
    parser.add_argument("--attention-raw", action="store_true",
                        help="with --attention: write the raw up-sampled pixel–tag scores instead of probabilities")
    parser.add_argument("--volumes", metavar="FILE", help="organ volumes (mL) as .json or .csv")
    parser.add_argument("--device", default=AUTO, help="auto (default), cpu or cuda")
    parser.add_argument("--overlap", type=float, default=None,
                        help="sliding-window overlap in [0, 1) (default 0.5; 0.25 with --fast)")
    parser.add_argument("--fast", action="store_true", help="quick preview: fewer, less overlapping windows, "
                        "tiling only the body's bounding box (those holding no body skipped)")
    parser.add_argument("--precision", default=AUTO, choices=PRECISIONS,
                        help="network number format: auto (default) is bf16 where the GPU or CPU computes it "
                        "natively (AMX, AVX512-BF16), fp32 elsewhere")
    parser.add_argument("--compile", default=AUTO, choices=COMPILE_MODES,
                        help="torch.compile the network on the CPU: auto (default) only where inductor's cache "
                        "already holds its compiled code (a run with 'on' left it, with a record of what it "
                        "measured) and the windows left would save more than loading it costs (about 7 s), never "
                        "on a cold cache (a first compile takes about 2 min on 2 cores, more than a full CT's "
                        "windows could save); on: always (builds the cache); off: never; falls back to "
                        "uncompiled where compiling fails")
    parser.add_argument("--json-progress", action="store_true", help="JSON-lines progress events on stdout")
    add_dicomweb_arguments(parser)
    cohort = parser.add_argument_group("cohorts (one model load for many cases; shards by RANK/WORLD_SIZE of "
                                       "torchrun or SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT)")
    cohort.add_argument("--inputs", metavar="LIST|DIR", help="a folder of volumes and DICOM series folders, or a "
                        "CSV manifest with a 'path' column (or a 'study' column, and optionally 'series', with "
                        "--dicomweb)")
    cohort.add_argument("--out", metavar="DIR", help="with --inputs: one folder per case (labels.nii.gz, "
                        "volumes.json, attention/) and the cases.csv log; cases already complete are skipped")


def add_dicomweb_arguments(parser) -> None:
    """--dicomweb, --study and --store (mosmos.inference.dicomweb), as `mosmos segment` and the batch script
    take them."""
    web = parser.add_argument_group("DICOMweb (credentials: MOSMOS_DICOMWEB_TOKEN, or MOSMOS_DICOMWEB_USER and "
                                    "MOSMOS_DICOMWEB_PASSWORD, or a netrc entry for the host)")
    web.add_argument("--dicomweb", metavar="URL", help="DICOMweb service root (e.g. http://pacs:8042/dicom-web) "
                     "to read the series from (QIDO-RS, WADO-RS) instead of an input file or folder")
    web.add_argument("--study", metavar="UID", help="with --dicomweb: the Study Instance UID to segment")
    web.add_argument("--store", action="store_true", help="with --dicomweb: send the DICOM SEG (and from "
                     "`mosmos segment --attention` the attention parametric maps) back into the study with STOW-RS")


def attention_file_name(tag: str, output: str) -> str:
    from ..inference.dicomseg import is_seg_output

    # Next to a DICOM SEG the maps are DICOM Parametric Maps; otherwise they follow the label map's format, an
    # uncompressed .nii included (no time spent compressing, where the user would rather have that).
    name = str(output).lower()
    ext = ".dcm" if is_seg_output(output) else next((e for e in (".nrrd", ".nii") if name.endswith(e)), ".nii.gz")
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


def check_outputs(args, dicom_in: bool | None = None) -> bool:
    """Refuse, before any work, outputs that cannot be written or that would replace an input of the run or a
    file mosmos did not write (mosmos.files.outputs); True when --output is a DICOM SEG. ``dicom_in``: whether
    the source is a DICOM series (default: judged from ``args.input``)."""
    from ..inference.dicom import is_dicom_file
    from ..inference.dicomseg import check_outside_series, highdicom, is_seg_output
    from ..inference.io import output_format

    source = Path(args.input) if args.input else None
    inputs = (args.input, args.model)
    if dicom_in is None:
        dicom_in = source.is_dir() or is_dicom_file(source)
    seg_out = is_seg_output(args.output) if args.output else False
    if seg_out and not dicom_in:
        raise MosmosError(f"{args.output}: DICOM SEG output needs a DICOM series as input, not {source.name}; "
                          "write .nii.gz or .nrrd")
    if args.series and not dicom_in:
        raise MosmosError(f"{source}: --series applies to a DICOM folder only")
    if source is not None and dicom_in and source.exists():
        check_outside_series(source if source.is_dir() else source.parent, args.output, args.attention,
                             args.volumes)
    if seg_out or getattr(args, "store", False):
        highdicom()   # a missing writer is found now, not after the inference
    if seg_out:
        if str(args.output).lower().endswith(".dcm"):
            check_output(args.output, "label map", inputs)
        else:
            check_output_folder(args.output, inputs)   # the file is named by its new SOP Instance UID
    elif args.output:
        output_format(args.output)
        check_output(args.output, "label map", inputs)
    if args.volumes:
        if not args.volumes.lower().endswith((".json", ".csv")):
            raise MosmosError(f"{args.volumes}: --volumes must end with .json or .csv")
        check_output(args.volumes, "organ volumes", inputs, others=[args.output])
    if args.attention:
        check_output_folder(args.attention, inputs)
    return seg_out


def check_source(args) -> None:
    """Exactly one source: INPUT, --dicomweb with --study, or (mosmos.inference.cohort) --inputs."""
    from ..inference.dicomseg import is_seg_output

    if args.dicomweb:
        if args.input:
            raise MosmosError(f"{args.input}: give either INPUT or --dicomweb URL --study UID, not both")
        if not args.study:
            raise MosmosError("--dicomweb needs --study UID (the study to segment)")
    elif args.study or args.store:
        raise MosmosError(f"{'--study' if args.study else '--store'} applies to --dicomweb URL only")
    elif not args.input:
        raise MosmosError("no input: give a volume or DICOM folder, --dicomweb URL --study UID, or --inputs LIST|DIR")
    if not args.output and not args.store:
        raise MosmosError("no output: --output FILE is required" + (" (or --store)" if args.dicomweb else ""))
    if args.attention_raw and not args.attention:
        raise MosmosError("--attention-raw needs --attention DIR (where the maps go)")
    if args.attention_raw and (args.store or (args.output and is_seg_output(args.output))):
        raise MosmosError("--attention-raw: DICOM parametric maps hold probabilities in [0, 1]; "
                          "write raw scores with a .nii.gz or .nrrd --output")


def run(args) -> int:
    from ..options import check_number

    if args.overlap is not None:  # None: the mode's default (segmenter.OVERLAP or FAST_OVERLAP)
        check_number("overlap", args.overlap)
    if args.inputs or args.out:
        return run_cohort(args)
    check_source(args)
    from ..inference import Segmenter  # torch: only once the options are known to be valid
    from ..inference.allocator import keep_window_buffers
    from ..inference.dicomseg import is_seg_output

    check_outputs(args, dicom_in=True if args.dicomweb else None)
    events = EventLog("-" if args.json_progress else None)
    with tempfile.TemporaryDirectory(prefix="mosmos-dicomweb-") as fetched:
        start = time.perf_counter()
        volume = read_source(args, fetched)
        stage(events, "read", start)
        start = time.perf_counter()
        keep_window_buffers()  # this process is ours: reuse each window's activations (allocator.py)
        segmenter = Segmenter(args.model, device=args.device)
        stage(events, "load model", start)
        result = segment_volume(segmenter, volume, args, events)
        output, attention_files = write_results(args, volume, result, args.output, args.attention, args.volumes,
                                                events)
    if not args.json_progress:
        for o in result.organs:
            print(f"{o['name']}: {o['volume_ml']:.1f} mL (label {o['label']})")
        if output is not None and is_seg_output(args.output):
            print(f"DICOM SEG: {output}")
        if args.store:
            print(f"stored in study {args.study} at {args.dicomweb}")
    events.emit("done", output=str(output), organs=result.organs, attention=attention_files,
                notices=result.notices)
    return 0


def read_source(args, fetched: str):
    """The volume of ``args.input`` or of the --dicomweb study (fetched into the folder ``fetched``); a SEG's
    source must carry the UIDs the SEG references, checked before the inference rather than after it."""
    from ..inference.dicomseg import check_referencable, is_seg_output
    from ..inference.io import read_volume

    if args.dicomweb:
        from ..inference.dicomweb import read_series

        volume = read_series(args.dicomweb, args.study, args.series, fetched)
    else:
        volume = read_volume(args.input, args.series)
    for note in getattr(volume.source, "notices", []):
        print(f"mosmos segment: note: {note}", file=sys.stderr)
    if (args.output and is_seg_output(args.output)) or args.store:
        check_referencable(volume.source)
    return volume


def stage(events, name: str, start: float | None = None, seconds: float | None = None) -> None:
    """A "stage" event of --json-progress: ``name`` took ``seconds`` (or the time since ``start``)."""
    seconds = time.perf_counter() - start if seconds is None else seconds
    events.emit("stage", stage=name, seconds=round(seconds, 3))


def segment_volume(segmenter, volume, args, events):
    """One volume through ``segmenter`` with the run's options, progress bar and messages; a "stage" event
    for each of the segmenter's stages but the label maps' map back (write_results adds it to the maps')."""
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
                                   overlap=args.overlap, modality=volume.modality,
                                   source=str(args.input or args.study), attention_raw=args.attention_raw,
                                   fast=args.fast, precision=args.precision, compile=args.compile, status=status)
    finally:
        bar.close()
    events.emit("run", **result.run)
    run = result.run
    for name in ("resample", "windows", "stitch"):
        stage(events, name, seconds=result.seconds[name])
    print(f"mosmos segment: {run['windows']} windows in {run['precision']}{', compiled' if run['compiled'] else ''} "
          f"(overlap {run['overlap']}), "
          f"{run['windows_skipped']} outside the body skipped", file=sys.stderr)
    for note in result.notices:
        print(f"mosmos segment: warning: {note}", file=sys.stderr)
        events.emit("notice", message=note)
    return result


def write_results(args, volume, result, output, attention, volumes, events):
    """The label map (or DICOM SEG) at ``output``, attention maps into the folder ``attention`` and organ volumes
    at ``volumes`` (each optional), all or none; with ``args.store`` the SEG (and maps) go to the study with
    STOW-RS first, and the files are committed only once the server has them. Returns the label map's path and
    the attention maps' file names by tag. Ends with the "stage" events "map back" (label and attention maps to
    the input grid) and "write" (the rest: encoding, compressing, storing; volumes are written on a thread while
    the next map is mapped back)."""
    from pydicom.uid import generate_uid

    from ..inference.dicomseg import attention_dataset, is_seg_output, segmentation_dataset, seg_file
    from ..inference.io import StagedWriter
    from ..inference.segmenter import QUANTUM

    inputs = (args.input, args.model)
    seg_out = bool(output) and is_seg_output(output)
    dicom = seg_out or args.store
    attention_files = {}
    if attention:  # their names follow from the tags, known only now; still nothing is written yet
        for tag in result.attention:
            attention_files[tag] = attention_file_name(tag, output or "x.dcm")
            check_output(Path(attention) / attention_files[tag], "attention map", inputs, others=[output, volumes])

    def uid(*what):
        return stored_uid(volume.source, args.model, result, *what) if args.store else None

    mapping = 0.0  # seconds making the attention maps on the input grid

    def mapped_back(tag: str, quantized: bool = False):
        """The map as float32, or as 16-bit steps of QUANTUM."""
        nonlocal mapping
        start = time.perf_counter()
        try:
            return result.attention.quantized(tag) if quantized else result.attention[tag]
        finally:
            mapping += time.perf_counter() - start
    start = time.perf_counter()
    with StagedWriter() as writer:
        stored = []
        if dicom:
            dataset = segmentation_dataset(volume.source, result.labelmap, result.organs, args.model,
                                           uid("seg series"), uid("seg"))
            stored.append(dataset)
        if seg_out:
            output = seg_file(output, dataset)
            writer.dataset(output, dataset)
        elif output:
            writer.volume(output, result.labelmap, result.affine, "label map")
        maps_series = uid("maps series") or generate_uid()   # one series holds the run's maps
        for number, (tag, name) in enumerate(attention_files.items(), 1):
            if dicom:
                pm = attention_dataset(volume.source, tag, mapped_back(tag), args.model, maps_series, number,
                                       uid("map", tag))
                stored.append(pm)
            if name.endswith(".dcm"):   # beside a SEG file, or with --store and no --output
                writer.dataset(Path(attention) / name, pm)
            elif args.attention_raw or not name.endswith((".nii.gz", ".nii")):
                writer.volume(Path(attention) / name, mapped_back(tag), result.affine, "attention map")
            else:
                writer.volume(Path(attention) / name, mapped_back(tag, quantized=True), result.affine, "attention map",
                              scale=QUANTUM)
        if volumes:
            writer.text(volumes, volumes_text(volumes, result, attention_files))
        if args.store:
            from ..inference.dicomweb import store

            store(args.dicomweb, stored)
        writer.commit()
    stage(events, "map back", seconds=result.seconds.get("map back", 0.0) + mapping)
    stage(events, "write", seconds=time.perf_counter() - start - mapping)
    return output, attention_files


def stored_uid(source, model, result, *what) -> str:
    """A UID for an object sent with STOW-RS that a rerun on the same series, model and organs repeats (a PACS
    keeps one instance per SOP Instance UID), so a case redone after a kill is not stored twice."""
    from pydicom.uid import generate_uid

    from ..files.modelcard import file_sha256

    organs = ",".join(f"{o['name']}={o['label']}" for o in result.organs)
    return generate_uid(entropy_srcs=[source.series_uid, file_sha256(model), organs, *what])


def run_cohort(args) -> int:
    """`mosmos segment --inputs ... --out ...` (mosmos.inference.cohort); 1 when any case of any rank failed."""
    import argparse

    from ..inference import cohort

    if not (args.inputs and args.out):
        raise MosmosError("--inputs LIST|DIR and --out DIR go together")
    for given, option in ((args.input, "INPUT"), (args.output, "--output"), (args.study, "--study"),
                          (args.volumes, "--volumes")):
        if given:
            raise MosmosError(f"{option} does not apply with --inputs (each case gets OUT/<case>/{cohort.LABELS} "
                              f"and {cohort.VOLUMES})")
    if args.store and not args.dicomweb:
        raise MosmosError("--store applies to --dicomweb URL only")
    if args.attention and (Path(args.attention).is_absolute() or len(Path(args.attention).parts) != 1):
        raise MosmosError(f"{args.attention}: with --inputs, --attention names a folder inside each case folder")
    if args.attention_raw and (args.store or not args.attention):
        raise MosmosError("--attention-raw needs --attention NAME and no --store (parametric maps hold probabilities)")
    cases = cohort.list_cases(args.inputs, args.dicomweb)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MosmosError(f"{out}: cannot write ({e.strerror or e})") from None
    rank, world = cohort.shard()
    mine = cases[rank::world]
    todo = [c for c in mine if not (out / c.name).is_dir()]
    print(f"mosmos segment: {len(cases)} cases, {len(mine)} for rank {rank} of {world}, "
          f"{len(mine) - len(todo)} already done", file=sys.stderr, flush=True)
    group = cohort.process_group(world)
    failed = 0
    if todo:
        from ..inference import Segmenter
        from ..inference.allocator import keep_window_buffers

        keep_window_buffers()
        segmenter = Segmenter(args.model, device=args.device)   # once for all the cases
        events = EventLog("-" if args.json_progress else None)

        def work(case, staging: Path) -> None:
            opts = argparse.Namespace(**{**vars(args), "input": str(case.path) if case.path else None,
                                         "study": case.study, "series": case.series})
            with tempfile.TemporaryDirectory(prefix="mosmos-dicomweb-") as fetched:
                volume = read_source(opts, fetched)
                result = segment_volume(segmenter, volume, opts, events)
                write_results(opts, volume, result, str(staging / cohort.LABELS),
                              str(staging / args.attention) if args.attention else None, str(staging / cohort.VOLUMES),
                              events)

        for case in todo:
            failed += cohort.run_case(case, out, rank, work, events) == "failed"
    failed = cohort.total_failed(failed, group)
    if failed:
        raise MosmosError(f"{failed} case{'s' if failed > 1 else ''} failed (see {out / cohort.LOG_NAME})")
    return 0
