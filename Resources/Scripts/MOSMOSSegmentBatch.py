"""Segment one volume file or a folder of them, headless.

  Slicer --no-splash --no-main-window --python-script MOSMOSSegmentBatch.py \\
      --input CT.nii.gz|FOLDER|DICOM_FOLDER --model MODEL --tags "liver, spleen" \\
      --output OUT.seg.nrrd|OUT.nii.gz|OUT.dcm|FOLDER [--series UID] [--attention DIR]
  Slicer ... --python-script MOSMOSSegmentBatch.py --dicomweb URL --study UID [--series UID] --model MODEL \\
      --output FOLDER [--store]

Also runs with plain Python where slicer-core is installed. Writes .seg.nrrd (named, coloured, coded segments),
a NIfTI/NRRD label map, or for a DICOM series folder a DICOM SEG (.dcm) that references it; with --attention,
per input and organ, the map that the MOSMOSSegment overlay shows: the probability that the organ wins at each
voxel, in [0, 1]. Beside a DICOM SEG, NAME_sr.dcm: a DICOM SR of the organs' volumes and QC. With --dicomweb the
series is fetched from a PACS (QIDO-RS, WADO-RS; credentials from MOSMOS_DICOMWEB_TOKEN, or MOSMOS_DICOMWEB_USER
and MOSMOS_DICOMWEB_PASSWORD, or a netrc file), and --store sends the DICOM SEG and SR back into its study
(STOW-RS). Exits non-zero with a one-line message on failure."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
# Source tree: <root>/Resources/Scripts/this.py next to <root>/mosmos (whose mosmos.mrml holds the module's
# logic). In Slicer with the extension installed it is importable already.
if HERE.parents[2].joinpath("mosmos").is_dir() and str(HERE.parents[2]) not in sys.path:
    sys.path.append(str(HERE.parents[2]))

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SEGMENTATION_SUFFIX = ".seg.nrrd"
DICOM_SEG_SUFFIX = ".dcm"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="MOSMOSSegmentBatch", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", help="a volume file, a folder of volume files, or a DICOM series folder")
    p.add_argument("--model", help="model file, or a model's name in the models folder (default: the only one)")
    p.add_argument("--tags", default="", help='organs, e.g. "liver, spleen" (default: every organ of the model)')
    p.add_argument("--output", required=True, help="output file for one input, or a folder")
    p.add_argument("--format", choices=("seg.nrrd", "nii.gz", "nrrd", "dcm"), default=None,
                   help="output format when --output is a folder (default seg.nrrd; dcm = DICOM SEG, the default "
                   "for a DICOM input)")
    p.add_argument("--series", metavar="UID", help="the series to segment when the DICOM folder holds several "
                   "(default: the largest)")
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")
    p.add_argument("--attention", metavar="DIR", help="also write DIR/<input name>/<organ>.nii.gz: per organ the "
                   "probability that it wins at each voxel (the attention overlay of MOSMOSSegment)")
    try:
        from mosmos.commands.segment import add_dicomweb_arguments
    except ImportError:   # no core: main() says so in one line
        pass
    else:
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


def plan(args) -> list[tuple[Path, Path]]:
    """(input, output) pairs, checked before any work."""
    jobs = volume_jobs(args)
    refuse_overwriting_inputs(jobs, args.model)
    return jobs


def volume_jobs(args) -> list[tuple[Path, Path]]:
    from mosmos.errors import MosmosError
    from mosmos.inference.dicomseg import check_outside_series

    source, target = Path(args.input), Path(args.output)
    if source.is_dir() and is_dicom_folder(source):
        check_outside_series(source, target)
        fmt = args.format or "dcm"
        if not target.name.lower().endswith(VOLUME_SUFFIXES + (SEGMENTATION_SUFFIX, DICOM_SEG_SUFFIX)):
            target = target / f"{source.name}.{fmt}"
        return [(source, target)]
    fmt = args.format or "seg.nrrd"
    if fmt == "dcm" or target.name.lower().endswith(DICOM_SEG_SUFFIX):
        raise MosmosError(f"{target}: DICOM SEG output needs a DICOM series folder as input, not {source.name}")
    if source.is_dir():
        inputs = sorted(p for p in source.iterdir() if is_volume_file(p))
        if not inputs:
            raise MosmosError(f"{source}: no volume files ({', '.join(VOLUME_SUFFIXES)}) and no DICOM series")
        return [(p, target / f"{stem(p)}.{fmt}") for p in inputs]
    if not source.is_file():
        raise MosmosError(f"{source}: no such file or folder")
    if target.is_dir() or not target.name.lower().endswith(VOLUME_SUFFIXES + (SEGMENTATION_SUFFIX,)):
        target = target / f"{stem(source)}.{fmt}"
    return [(source, target)]


def refuse_overwriting_inputs(jobs, model) -> None:
    """Before any work: no output may be an input volume (--output beside the inputs with their format) or the model."""
    from mosmos.errors import MosmosError
    from mosmos.files.outputs import same_file

    inputs = [source for source, _ in jobs] + ([Path(model)] if model else [])
    for _, target in jobs:
        clash = next((p for p in inputs if same_file(target, p)), None)
        if clash is not None:
            raise MosmosError(f"{target}: is an input of this run ({clash}); choose another output")


def read_input(source: Path, scene, series):
    """A volume node, and for a DICOM series the core's DicomSource (which a DICOM SEG references)."""
    from mosmos.mrml import volumes

    if not source.is_dir():
        return volumes.read_volume(source, scene), None
    from mosmos.inference.io import read_volume

    volume = read_volume(source, series)
    for note in volume.source.notices:
        print(f"    note: {note}", flush=True)
    node = volumes.volume_from_array(scene, volume.array.transpose(2, 1, 0), volume.affine, source.name)
    return node, volume.source


def write_output(outputs, volumeNode, path: Path, dicomSource, model, store: str | None = None) -> None:
    """``store``: a DICOMweb URL to send a DICOM SEG (and its SR) to (STOW-RS) before the files are committed."""
    from mosmos.mrml import segmentation, volumes

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.lower().endswith(DICOM_SEG_SUFFIX):
        from mosmos.inference.dicomseg import segmentation_dataset
        from mosmos.inference.dicomsr import measurement_report_dataset, report_file
        from mosmos.inference.io import StagedWriter

        # The pipeline's label map is in Slicer's (k, j, i) order; the core's volumes are (i, j, k).
        dataset = segmentation_dataset(dicomSource, outputs.labelmap.transpose(2, 1, 0), outputs.organs, model)
        # The organs' volumes and QC (from the core's run) beside the SEG, as `mosmos segment` writes them.
        report = measurement_report_dataset(dicomSource, dataset, outputs.organs, model)
        with StagedWriter() as writer:
            writer.dataset(path, dataset)
            writer.dataset(report_file(path, report), report)
            if store:
                from mosmos.inference.dicomweb import store as stow

                stow(store, [dataset, report])
            writer.commit()
        return
    if path.name.lower().endswith(SEGMENTATION_SUFFIX):
        segmentation.write_segmentation(outputs.segmentationNode, str(path))
        return
    scene = volumeNode.GetScene()
    labelNode = volumes.volume_from_array(scene, outputs.labelmap, volumes.ijk_to_ras(volumeNode), "labels",
                                          "vtkMRMLLabelMapVolumeNode")
    try:
        volumes.write_volume(labelNode, path)
    finally:
        scene.RemoveNode(labelNode)


def write_attention(outputs, folder: Path) -> None:
    from mosmos.mrml import volumes

    folder.mkdir(parents=True, exist_ok=True)
    for tag, node in outputs.attentionNodes.items():
        volumes.write_volume(node, folder / f"{tag.replace(' ', '_')}.nii.gz")


def run(args) -> None:
    import slicer
    from mosmos.mrml import pipeline

    from mosmos.errors import MosmosError

    if getattr(slicer, "mrmlScene", None) is None:
        # Plain Python (slicer-core): a bare scene has none of Slicer's default colour tables, and VTK warns
        # about each; the output files do not depend on them.
        import vtk

        vtk.vtkObject.GlobalWarningDisplayOff()
        slicer.mrmlScene = slicer.vtkMRMLScene()
    scene = slicer.mrmlScene
    if args.dicomweb or args.study or args.store:
        fetch_study(args)
    if not args.input:
        raise MosmosError("no input: give --input, or --dicomweb URL --study UID")
    jobs = plan(args)
    model = pipeline.resolve_model(args.model)
    for i, (source, target) in enumerate(jobs, 1):
        print(f"[{i}/{len(jobs)}] {source} -> {target}", flush=True)
        volumeNode, dicomSource = read_input(source, scene, args.series)
        if dicomSource is None and args.series:
            raise MosmosError(f"{source}: --series applies to a DICOM folder only")
        outputs = pipeline.segment_volume_node(volumeNode, args.tags, model, args.device,
                                               attention=bool(args.attention))
        if args.store and not target.name.lower().endswith(DICOM_SEG_SUFFIX):
            raise MosmosError(f"{target}: --store sends a DICOM SEG; write .dcm (--format dcm)")
        write_output(outputs, volumeNode, target, dicomSource, model, args.dicomweb if args.store else None)
        if args.attention:
            write_attention(outputs, Path(args.attention) / stem(source))
        for organ in outputs.organs:
            print(f"    {organ['name']}: label {organ['label']}", flush=True)
        for notice in outputs.notices:
            print(f"    note: {notice}", flush=True)
        scene.Clear(0)


def fetch_study(args) -> None:
    """Fetch the --study's series from --dicomweb into a temporary folder named by the study, which becomes --input
    (removed when the process ends)."""
    import atexit
    import shutil
    import tempfile

    from mosmos.errors import MosmosError
    from mosmos.inference.dicomweb import retrieve_series

    if not (args.dicomweb and args.study):
        raise MosmosError("--dicomweb URL and --study UID go together" + (", and --store needs them"
                                                                           if args.store else ""))
    if args.input:
        raise MosmosError(f"{args.input}: give either --input or --dicomweb URL --study UID, not both")
    root = tempfile.mkdtemp(prefix="mosmos-dicomweb-")
    atexit.register(shutil.rmtree, root, True)
    folder = Path(root) / args.study
    args.series = retrieve_series(args.dicomweb, args.study, args.series, folder)
    args.input = str(folder)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        from mosmos.errors import MosmosError
        from mosmos.mrml.process import Cancelled
    except ImportError as e:
        print(f"MOSMOSSegmentBatch: error: {e} (is the MOSMOS extension installed?)", file=sys.stderr)
        return 1
    try:
        run(args)
    except (MosmosError, Cancelled) as e:
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
