"""Segment one volume file or a folder of them, headless.

  Slicer --no-splash --no-main-window --python-script MOSMOSSegmentBatch.py \\
      --input CT.nii.gz|FOLDER --model MODEL --tags "liver, spleen" --output OUT.seg.nrrd|OUT.nii.gz|FOLDER

Also runs with plain Python where slicer-core is installed. Writes .seg.nrrd (named, coloured, coded segments)
or a NIfTI/NRRD label map; exits non-zero with a one-line message on failure."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
# Source tree: <root>/Resources/Scripts/this.py next to <root>/MOSMOSSegment and <root>/mosmos. In Slicer with the
# extension installed both are importable already.
for candidate in (HERE.parents[2] / "MOSMOSSegment", HERE.parents[2]):
    if candidate.is_dir() and str(candidate) not in sys.path:
        sys.path.append(str(candidate))

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SEGMENTATION_SUFFIX = ".seg.nrrd"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="MOSMOSSegmentBatch", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="a volume file or a folder of volume files")
    p.add_argument("--model", help="model file, or a model's name in the models folder (default: the only one)")
    p.add_argument("--tags", default="", help='organs, e.g. "liver, spleen" (default: every organ of the model)')
    p.add_argument("--output", required=True, help="output file for one input, or a folder")
    p.add_argument("--format", choices=("seg.nrrd", "nii.gz", "nrrd"), default="seg.nrrd",
                   help="output format when --output is a folder (default seg.nrrd)")
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")
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


def plan(args) -> list[tuple[Path, Path]]:
    from mosmos.errors import MosmosError

    source, target = Path(args.input), Path(args.output)
    if source.is_dir():
        inputs = sorted(p for p in source.iterdir() if is_volume_file(p))
        if not inputs:
            raise MosmosError(f"{source}: no volume files ({', '.join(VOLUME_SUFFIXES)})")
        jobs = [(p, target / f"{stem(p)}.{args.format}") for p in inputs]
    elif not source.is_file():
        raise MosmosError(f"{source}: no such file or folder")
    else:
        if target.is_dir() or not target.name.lower().endswith(VOLUME_SUFFIXES + (SEGMENTATION_SUFFIX,)):
            target = target / f"{stem(source)}.{args.format}"
        jobs = [(source, target)]
    refuse_overwriting_inputs(jobs, args.model)
    return jobs


def refuse_overwriting_inputs(jobs, model) -> None:
    """Before any work: no output may be an input volume (--output beside the inputs with their format) or the model."""
    from mosmos.errors import MosmosError
    from mosmos.outputs import same_file

    inputs = [source for source, _ in jobs] + ([Path(model)] if model else [])
    for _, target in jobs:
        clash = next((p for p in inputs if same_file(target, p)), None)
        if clash is not None:
            raise MosmosError(f"{target}: is an input of this run ({clash}); choose another output")


def write_output(outputs, volumeNode, path: Path) -> None:
    from MOSMOSSegmentLib import segmentation, volumes

    path.parent.mkdir(parents=True, exist_ok=True)
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


def run(args) -> None:
    import slicer
    from MOSMOSSegmentLib import pipeline, volumes

    if getattr(slicer, "mrmlScene", None) is None:
        # Plain Python (slicer-core): a bare scene has none of Slicer's default colour tables, and VTK warns
        # about each; the output files do not depend on them.
        import vtk

        vtk.vtkObject.GlobalWarningDisplayOff()
        slicer.mrmlScene = slicer.vtkMRMLScene()
    scene = slicer.mrmlScene
    jobs = plan(args)
    model = pipeline.resolve_model(args.model)
    for i, (source, target) in enumerate(jobs, 1):
        print(f"[{i}/{len(jobs)}] {source} -> {target}", flush=True)
        volumeNode = volumes.read_volume(source, scene)
        outputs = pipeline.segment_volume_node(volumeNode, args.tags, model, args.device)
        write_output(outputs, volumeNode, target)
        for organ in outputs.organs:
            print(f"    {organ['name']}: label {organ['label']}", flush=True)
        for notice in outputs.notices:
            print(f"    note: {notice}", flush=True)
        scene.Clear(0)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        from mosmos.errors import MosmosError
        from MOSMOSSegmentLib.process import Cancelled
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
