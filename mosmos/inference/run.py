"""``mosmos.segment``: a SegmentRequest -> read -> segment -> every output written through one staged writer
(label map or DICOM SEG, attention maps, organ volumes; with ``store`` the DICOM objects go to the study first).

Every front door runs this: ``mosmos segment`` (argparse plus this call), its cohorts (one request per case),
the Slicer module's and the web app's background process, the headless batch script.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MosmosError
from ..files.events import EventLog, progress_bar
from ..files.outputs import check_output, check_output_folder
from ..qc.segmentation import case_columns, check_result
from .request import SegmentRequest

LOG = "mosmos segment"   # how the run's messages on stderr begin


@dataclass
class SegmentOutputs:
    """What a run wrote.

    Args:
        output: the label map or DICOM SEG file; None when the request named none.
        report: the DICOM SR of the organs' volumes and QC beside the SEG file; None without one.
        attention: tag -> file name in the attention folder.
        organs: per organ: name, label, volume_ml, color (SegmentationResult.organs).
        notices: one line each: organs not found, open-set tags, fallbacks.
        run: how the windows ran (SegmentationResult.run).
        labelmap: the label map itself, on the input's grid in its (i, j, k) order (SegmentationResult.labelmap);
            None for a cohort.
        affine: the label map's voxel->RAS matrix (4x4).
    """

    output: Path | None
    report: Path | None = None
    attention: dict = field(default_factory=dict)
    organs: list = field(default_factory=list)
    notices: list = field(default_factory=list)
    run: dict = field(default_factory=dict)
    labelmap: Any = None
    affine: Any = None


def segment(request: SegmentRequest | None = None, /, **options: Any) -> SegmentOutputs | None:
    """Segment one volume (or a cohort) and write every output the request names.

    ``mosmos.segment(model="abdomen.mosmos", input="ct.nii.gz", output="labels.nii.gz", tags="liver, spleen")``
    makes the SegmentRequest from keywords; a cohort (``inputs`` and ``out``) returns None and raises
    MosmosError when a case failed.

    Args:
        request: a SegmentRequest; left out, one is made from ``options``.
        **options: the SegmentRequest's fields (model, input, output, tags, attention, volumes, device, ...).

    Returns:
        What was written, with the label map itself, the organs' volumes and the run's notices.
    """
    if request is None:
        request = SegmentRequest(**options)
    elif options:
        raise TypeError("give a SegmentRequest or its fields as keywords, not both")
    if request.cohort:
        return run_cohort(request)
    from .allocator import keep_window_buffers
    from .segmenter import Segmenter  # torch: only once the request is known to be valid

    check_outputs(request)
    events = EventLog("-" if request.json_progress else None)
    with tempfile.TemporaryDirectory(prefix="mosmos-dicomweb-") as fetched:
        start = time.perf_counter()
        volume = read_source(request, fetched)
        stage(events, "read", start)
        start = time.perf_counter()
        keep_window_buffers()  # this process is ours: reuse each window's activations (allocator.py)
        segmenter = Segmenter(request.model, device=request.device)
        stage(events, "load model", start)
        result = segment_volume(segmenter, volume, request, events)
        output, report, attention_files = write_results(request, volume, result, events)
    events.emit("done", output=str(output), report=str(report) if report else None, organs=result.organs,
                attention=attention_files, notices=result.notices)
    return SegmentOutputs(output, report, attention_files, result.organs, result.notices, result.run,
                          result.labelmap, result.affine)


def check_outputs(request: SegmentRequest) -> None:
    """Refuse, before any work, outputs that cannot be written or that would replace an input of the run or a
    file mosmos did not write (mosmos.files.outputs)."""
    from .dicom import is_dicom_file
    from .dicomseg import check_outside_series, highdicom
    from .dicomsr import report_file
    from .io import output_format

    source = Path(request.input) if request.input else None
    inputs = (request.input, request.model)
    dicom_in = bool(request.dicomweb) or source.is_dir() or is_dicom_file(source)
    if request.seg_output and not dicom_in:
        raise MosmosError(f"{request.output}: DICOM SEG output needs a DICOM series as input, not {source.name}; "
                          "write .nii.gz or .nrrd")
    if request.series and not dicom_in:
        raise MosmosError(f"{source}: --series applies to a DICOM folder only")
    if source is not None and dicom_in and source.exists():
        check_outside_series(source if source.is_dir() else source.parent, request.output, request.attention,
                             request.volumes)
    if request.dicom:
        highdicom()   # a missing writer is found now, not after the inference
    if request.seg_output:
        if str(request.output).lower().endswith(".dcm"):
            check_output(request.output, "label map", inputs)
            check_output(report_file(request.output, None), "DICOM SR", inputs, others=[request.output])
        else:
            check_output_folder(request.output, inputs)   # the file is named by its new SOP Instance UID
    elif request.output:
        output_format(request.output)
        check_output(request.output, "label map", inputs)
    if request.volumes:
        if not request.volumes.lower().endswith((".json", ".csv")):
            raise MosmosError(f"{request.volumes}: --volumes must end with .json or .csv")
        check_output(request.volumes, "organ volumes", inputs,
                     others=[request.output, report_file(request.output, None) if request.seg_output else None])
    if request.attention:
        check_output_folder(request.attention, inputs)


def read_source(request: SegmentRequest, fetched: str):
    """The volume of ``request.input`` or of the DICOMweb study (fetched into the folder ``fetched``); a SEG's
    source must carry the UIDs the SEG references, checked before the inference rather than after it."""
    from .dicomseg import check_referencable
    from .io import read_volume

    if request.dicomweb:
        from .dicomweb import read_series

        volume = read_series(request.dicomweb, request.study, request.series, fetched)
    else:
        volume = read_volume(request.input, request.series)
    for note in getattr(volume.source, "notices", []):
        print(f"{LOG}: note: {note}", file=sys.stderr)
    if request.dicom:
        check_referencable(volume.source)
    return volume


def stage(events, name: str, start: float | None = None, seconds: float | None = None) -> None:
    """A "stage" event of --json-progress: ``name`` took ``seconds`` (or the time since ``start``)."""
    seconds = time.perf_counter() - start if seconds is None else seconds
    events.emit("stage", stage=name, seconds=round(seconds, 3))


def segment_volume(segmenter, volume, request: SegmentRequest, events):
    """One volume through ``segmenter`` with the request's options, progress bar and messages; a "stage" event
    for each of the segmenter's stages but the label maps' map back (write_results adds it to the maps')."""
    bar = progress_bar(0, "segment", enabled=None if not request.json_progress else False)

    def progress(done: int, total: int) -> bool:
        bar.total = total
        bar.n = done
        bar.refresh()
        events.emit("progress", done=done, total=total)
        return True

    def status(message: str) -> None:
        print(f"{LOG}: {message}", file=sys.stderr, flush=True)
        events.emit("status", message=message)

    try:
        result = segmenter.segment(volume.array, volume.affine, tags=request.tags, progress=progress,
                                   overlap=request.overlap, modality=volume.modality, source=request.source_name,
                                   attention_raw=request.attention_raw, fast=request.fast,
                                   precision=request.precision, compile=request.compile, status=status)
    finally:
        bar.close()
    events.emit("run", **result.run)
    run = result.run
    for name in ("resample", "windows", "stitch"):
        stage(events, name, seconds=result.seconds[name])
    start = time.perf_counter()
    check_result(result, volume.array, segmenter.header, request.qc_profile, volume.modality)
    stage(events, "qc", start)
    print(f"{LOG}: {run['windows']} windows in {run['precision']}{', compiled' if run['compiled'] else ''} "
          f"(overlap {run['overlap']}), {run['windows_skipped']} outside the body skipped", file=sys.stderr)
    for note in result.notices:
        print(f"{LOG}: warning: {note}", file=sys.stderr)
        events.emit("notice", message=note)
    return result


def attention_file_name(tag: str, output: str) -> str:
    """The file of ``tag``'s map: next to a DICOM SEG a DICOM Parametric Map; otherwise the label map's format,
    an uncompressed .nii included (no time spent compressing, where the user would rather have that)."""
    from .request import is_seg_output

    name = str(output).lower()
    ext = ".dcm" if is_seg_output(output) else next((e for e in (".nrrd", ".nii") if name.endswith(e)), ".nii.gz")
    return tag.replace(" ", "_") + ext


def volumes_text(path: str, result, attention_files: dict) -> str:
    """The organ volumes file: JSON (organs, attention files, notices) or CSV (one row per organ)."""
    if path.lower().endswith(".json"):
        return json.dumps({"organs": result.organs, "attention": attention_files, "notices": result.notices},
                          indent=2) + "\n"
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["name", "label", "volume_ml", "r", "g", "b", "status", "reasons"])
    for o in result.organs:
        w.writerow([o["name"], o["label"], o["volume_ml"], *o["color"], o.get("status", ""),
                    " | ".join(o.get("reasons", []))])
    return buf.getvalue()


def write_results(request: SegmentRequest, volume, result, events):
    """The label map (or DICOM SEG and the SR of its organs' volumes and QC), attention maps and organ volumes
    the request names, all or none; with ``store`` the SEG, SR (and maps) go to the study with STOW-RS first, and
    the files are committed only once the server has them. Returns the label map's path, the SR's (or None) and
    the attention maps' file names by tag. Ends with the
    "stage" events "map back" (label and attention maps to the input grid) and "write" (the rest: encoding,
    compressing, storing; volumes are written on a thread while the next map is mapped back)."""
    from pydicom.uid import generate_uid

    from ..files.folders import new_folders_removed_on_error
    from .dicomseg import seg_file, segmentation_dataset
    from .dicomsr import measurement_report_dataset, report_file
    from .parametric_map import attention_dataset
    from .io import StagedWriter
    from .segmenter import QUANTUM

    output, attention, volumes = request.output, request.attention, request.volumes
    report = None
    inputs = (request.input, request.model)
    attention_files = {}
    if attention:  # their names follow from the tags, known only now; still nothing is written yet
        for tag in result.attention:
            # with no output file: parametric maps where the SEG goes to the study, NIfTI where it stays in memory
            attention_files[tag] = attention_file_name(tag, output or ("x.dcm" if request.store else "x.nii.gz"))
            check_output(Path(attention) / attention_files[tag], "attention map", inputs, others=[output, volumes])

    def uid(*what):
        return stored_uid(volume.source, request.model, result, *what) if request.store else None

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
    with new_folders_removed_on_error(output, attention, volumes), StagedWriter() as writer:
        stored = []
        if request.dicom:
            dataset = segmentation_dataset(volume.source, result.labelmap, result.organs, request.model,
                                           uid("seg series"), uid("seg"))
            sr = measurement_report_dataset(volume.source, dataset, result.organs, request.model,
                                            uid("sr series"), uid("sr"))
            stored += [dataset, sr]
        if request.seg_output:
            report = report_file(output, sr)
            output = seg_file(output, dataset)
            writer.dataset(output, dataset)
            writer.dataset(report, sr)
        elif output:
            writer.volume(output, result.labelmap, result.affine, "label map")
        maps_series = uid("maps series") or generate_uid()   # one series holds the run's maps
        for number, (tag, name) in enumerate(attention_files.items(), 1):
            if request.dicom:
                pm = attention_dataset(volume.source, tag, mapped_back(tag), request.model, maps_series, number,
                                       uid("map", tag))
                stored.append(pm)
            if name.endswith(".dcm"):   # beside a SEG file, or with --store and no --output
                writer.dataset(Path(attention) / name, pm)
            elif request.attention_raw or not name.endswith((".nii.gz", ".nii")):
                writer.volume(Path(attention) / name, mapped_back(tag), result.affine, "attention map")
            else:
                writer.volume(Path(attention) / name, mapped_back(tag, quantized=True), result.affine, "attention map",
                              scale=QUANTUM)
        if volumes:
            writer.text(volumes, volumes_text(volumes, result, attention_files))
        if request.store:
            from .dicomweb import store

            store(request.dicomweb, stored)
        writer.commit()
    stage(events, "map back", seconds=result.seconds.get("map back", 0.0) + mapping)
    stage(events, "write", seconds=time.perf_counter() - start - mapping)
    return output, report, attention_files


def stored_uid(source, model, result, *what) -> str:
    """A UID for an object sent with STOW-RS that a rerun on the same series, model and organs repeats (a PACS
    keeps one instance per SOP Instance UID), so a case redone after a kill is not stored twice."""
    from pydicom.uid import generate_uid

    from ..files.modelcard import file_sha256

    organs = ",".join(f"{o['name']}={o['label']}" for o in result.organs)
    return generate_uid(entropy_srcs=[source.series_uid, file_sha256(model), organs, *what])


def run_cohort(request: SegmentRequest) -> None:
    """A cohort (mosmos.inference.cohort): one model load, one request per case, then the cohort's QC report
    (cohort_qc); MosmosError when any case of any rank failed."""
    from . import cohort

    cases = cohort.list_cases(request.inputs, request.dicomweb)
    out = Path(request.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MosmosError(f"{out}: cannot write ({e.strerror or e})") from None
    rank, world = cohort.shard()
    mine = cases[rank::world]
    todo = [c for c in mine if not (out / c.name).is_dir()]
    print(f"{LOG}: {len(cases)} cases, {len(mine)} for rank {rank} of {world}, "
          f"{len(mine) - len(todo)} already done", file=sys.stderr, flush=True)
    group = cohort.process_group(world)
    failed = 0
    if todo:
        from .allocator import keep_window_buffers
        from .segmenter import Segmenter

        keep_window_buffers()
        segmenter = Segmenter(request.model, device=request.device)   # once for all the cases
        events = EventLog("-" if request.json_progress else None)

        def work(case, staging: Path) -> dict:
            case_request = request.for_case(case, staging)
            with tempfile.TemporaryDirectory(prefix="mosmos-dicomweb-") as fetched:
                volume = read_source(case_request, fetched)
                result = segment_volume(segmenter, volume, case_request, events)
                write_results(case_request, volume, result, events)
                return case_columns(result.organs)   # the case's QC in its cases.csv line

        for case in todo:
            failed += cohort.run_case(case, out, rank, work, events) == "failed"
    failed = cohort.total_failed(failed, group)
    if group is None or rank == 0:   # under torchrun every rank has finished here; rank 0 writes the report
        from .cohort_qc import write_cohort_qc

        print(f"{LOG}: quality check of the cohort: {write_cohort_qc(out, cases)}", file=sys.stderr, flush=True)
    if failed:
        raise MosmosError(f"{failed} case{'s' if failed > 1 else ''} failed (see {out / cohort.LOG_NAME})")
    return None
