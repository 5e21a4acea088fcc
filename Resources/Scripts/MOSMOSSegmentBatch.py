"""Segment one volume file or a folder of them, headless.

  Slicer --no-splash --no-main-window --python-script MOSMOSSegmentBatch.py \\
      --input CT.nii.gz|FOLDER|DICOM_FOLDER --model MODEL --tags "liver, spleen" \\
      --output OUT.seg.nrrd|OUT.nii.gz|OUT.dcm|FOLDER [--series UID] [--attention DIR]
  Slicer ... --python-script MOSMOSSegmentBatch.py --dicomweb URL --study UID [--series UID] --model MODEL \\
      --output FOLDER [--store]

Also runs with plain Python where slicer-core is installed. Each input is one SegmentRequest run in this process
by mosmos.segment (the `mosmos segment` command's options and checks, its one staged writer for label maps,
DICOM SEG and SR, attention maps, organ volumes and DICOMweb); only a .seg.nrrd (named, coloured, coded segments)
is written here, from the label map the run returns, since it needs MRML. A DICOM series folder gives a DICOM SEG
(.dcm) that references it by default, with NAME_sr.dcm beside it: a DICOM SR of the organs' volumes and QC; with
--attention, per input and organ, the map that the MOSMOSSegment overlay shows: the probability that the organ
wins at each voxel, in [0, 1] (beside a DICOM SEG as DICOM parametric maps). With --dicomweb the series is read
from a PACS (QIDO-RS, WADO-RS; credentials from MOSMOS_DICOMWEB_TOKEN, or MOSMOS_DICOMWEB_USER and
MOSMOS_DICOMWEB_PASSWORD, or a netrc file), and --store sends the DICOM SEG and SR back into its study
(STOW-RS). Exits non-zero with a one-line message on failure."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
# Source tree: <root>/Resources/Scripts/this.py next to <root>/mosmos (whose mosmos.mrml holds the module's
# logic). In Slicer with the extension installed it is importable already.
if HERE.parents[2].joinpath("mosmos").is_dir() and str(HERE.parents[2]) not in sys.path:
    sys.path.append(str(HERE.parents[2]))

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr")   # what mosmos.inference.io reads
SEGMENTATION_SUFFIX = ".seg.nrrd"
DICOM_SEG_SUFFIX = ".dcm"


def parse_args(argv):
    from mosmos.commands.segment import add_dicomweb_arguments, add_run_arguments

    p = argparse.ArgumentParser(prog="MOSMOSSegmentBatch", description=__doc__.split("\n\n")[0],
                                epilog="--attention DIR: the maps of each input go into DIR/<input name>/; "
                                "--volumes FILE takes one input")
    p.add_argument("--input", help="a volume file, a folder of volume files, or a DICOM series folder")
    p.add_argument("--model", help="model file, or a model's name in the models folder (default: the only one)")
    p.add_argument("--output", required=True, help="output file for one input, or a folder")
    p.add_argument("--format", choices=("seg.nrrd", "nii.gz", "nrrd", "dcm"), default=None,
                   help="output format when --output is a folder (default seg.nrrd; dcm = DICOM SEG, the default "
                   "for a DICOM input)")
    add_run_arguments(p)
    add_dicomweb_arguments(p)
    return p.parse_args(argv)


def is_volume_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(VOLUME_SUFFIXES) and not name.endswith(SEGMENTATION_SUFFIX)


def stem(path: Path) -> str:
    name = path.name
    for suffix in (SEGMENTATION_SUFFIX,) + VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def is_dicom_folder(folder: Path) -> bool:
    from mosmos.inference.dicom import is_dicom_file

    return not any(is_volume_file(p) for p in folder.iterdir()) and any(
        is_dicom_file(p) for p in folder.rglob("*") if p.is_file())


def is_output_file(target: Path, dicom: bool) -> bool:
    """Whether --output names a file rather than the folder its files go into."""
    suffixes = VOLUME_SUFFIXES + (SEGMENTATION_SUFFIX,) + ((DICOM_SEG_SUFFIX,) if dicom else ())
    return not target.is_dir() and target.name.lower().endswith(suffixes)


def volume_jobs(args) -> list[tuple[str, Path | None, Path]]:
    """(name, input or None for the --dicomweb study, output file) per input, before any work."""
    from mosmos.errors import MosmosError

    target = Path(args.output)
    if args.dicomweb or args.study:
        if args.input:
            raise MosmosError(f"{args.input}: give either --input or --dicomweb URL --study UID, not both")
        name = args.study or "study"
        return [(name, None, target if is_output_file(target, True) else target / f"{name}.{args.format or 'dcm'}")]
    if not args.input:
        raise MosmosError("no input: give --input, or --dicomweb URL --study UID")
    source = Path(args.input)
    if source.is_dir() and is_dicom_folder(source):
        fmt = args.format or "dcm"
        return [(source.name, source, target if is_output_file(target, True) else target / f"{source.name}.{fmt}")]
    fmt = args.format or "seg.nrrd"
    if fmt == "dcm" or target.name.lower().endswith(DICOM_SEG_SUFFIX):
        raise MosmosError(f"{target}: DICOM SEG output needs a DICOM series folder as input, not {source.name}")
    if source.is_dir():
        inputs = sorted(p for p in source.iterdir() if is_volume_file(p))
        if not inputs:
            raise MosmosError(f"{source}: no volume files ({', '.join(VOLUME_SUFFIXES)}) and no DICOM series")
        return [(stem(p), p, target / f"{stem(p)}.{fmt}") for p in inputs]
    if not source.is_file():
        raise MosmosError(f"{source}: no such file or folder")
    return [(stem(source), source, target if is_output_file(target, False) else target / f"{stem(source)}.{fmt}")]


def is_segmentation_file(path: Path) -> bool:
    return path.name.lower().endswith(SEGMENTATION_SUFFIX)


def plan(args, jobs, model: Path):
    """(request, output file) per job of volume_jobs, each request checked (mosmos.inference.run.check_outputs)
    before any work. A .seg.nrrd is this script's own output: the request keeps the label map in memory for it."""
    from mosmos.errors import MosmosError
    from mosmos.inference.request import SegmentRequest
    from mosmos.inference.run import check_outputs

    if args.volumes and len(jobs) > 1:
        raise MosmosError(f"{args.volumes}: --volumes names one file; give one input, not a folder of {len(jobs)}")
    planned = []
    for name, source, target in jobs:
        request = SegmentRequest.from_args(
            args, model=model, input=source, output=None if is_segmentation_file(target) else target,
            attention=Path(args.attention) / name if args.attention else None, inputs=None, out=None)
        check_outputs(request)
        if is_segmentation_file(target):
            check_segmentation_file(target, request)
        planned.append((request, target))
    return planned


def check_segmentation_file(target: Path, request) -> None:
    """The .seg.nrrd may replace an earlier one (Slicer's writer keeps no mosmos mark to tell it by), never an
    input of the run, and never inside a DICOM series folder."""
    from mosmos.errors import MosmosError
    from mosmos.files.outputs import check_writable, same_file
    from mosmos.inference.dicomseg import check_outside_series

    for given in (request.input, request.model):
        if given and same_file(target, Path(given)):
            raise MosmosError(f"{target}: is an input of this run ({given}); choose another output")
    if target.is_dir():
        raise MosmosError(f"{target}: is a folder, not a file name")
    if request.input and Path(request.input).is_dir():
        check_outside_series(request.input, target)
    check_writable(target)


def write_segmentation_file(written, target: Path, name: str) -> None:
    """The run's label map as a .seg.nrrd, staged beside ``target`` and renamed over it."""
    import slicer

    from mosmos.files.atomic import staging_file
    from mosmos.mrml.segmentation import build_segmentation_node, write_segmentation

    if getattr(slicer, "mrmlScene", None) is None:
        # Plain Python (slicer-core): a bare scene has none of Slicer's default colour tables, and VTK warns
        # about each; the output file does not depend on them.
        import vtk

        vtk.vtkObject.GlobalWarningDisplayOff()
        slicer.mrmlScene = slicer.vtkMRMLScene()
    scene = slicer.mrmlScene
    # The core's arrays are (i, j, k) with a voxel->RAS affine; MRML's are (k, j, i) with the same matrix.
    node = build_segmentation_node(scene, written.labelmap.transpose(2, 1, 0), written.affine, written.organs,
                                   f"{name} segmentation")
    staged = staging_file(target, SEGMENTATION_SUFFIX)   # the storage node picks its writer by the suffix
    try:
        write_segmentation(node, str(staged))
        os.replace(staged, target)
    finally:
        staged.unlink(missing_ok=True)
        scene.RemoveNode(node)


def run(args) -> None:
    from mosmos.inference.run import segment
    from mosmos.mrml import deps, pipeline

    jobs = volume_jobs(args)
    deps.ensure_dependencies()   # a fresh Slicer installs the core's packages (no dialog without a main window)
    planned = plan(args, jobs, pipeline.resolve_model(args.model))
    for i, (request, target) in enumerate(planned, 1):
        print(f"[{i}/{len(planned)}] {request.source_name} -> {target}", flush=True)
        written = segment(request)
        if is_segmentation_file(target):
            write_segmentation_file(written, target, stem(target))
        for organ in written.organs:
            print(f"    {organ['name']}: label {organ['label']}", flush=True)


def main(argv=None) -> int:
    try:
        from mosmos.errors import MosmosError
    except ImportError as e:
        print(f"MOSMOSSegmentBatch: error: {e} (is the MOSMOS extension installed?)", file=sys.stderr)
        return 1
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except MosmosError as e:
        print(f"MOSMOSSegmentBatch: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("MOSMOSSegmentBatch: interrupted", file=sys.stderr)
        return 130
    return 0


def exit_app(code: int) -> None:
    try:
        import slicer

        app = slicer.app
    except (ImportError, AttributeError):
        app = None
    if app is not None:
        # Inside Slicer, quit the application with the code (otherwise it keeps running).
        slicer.util.exit(code)
    else:
        sys.exit(code)


if __name__ == "__main__":
    exit_app(main())
