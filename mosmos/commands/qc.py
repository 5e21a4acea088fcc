"""`mosmos qc`: the anatomy checks of mosmos.qc on any segmentation (TotalSegmentator's, a manual one, a DICOM
SEG): for each organ a status (ok, check, fail) and its reasons. A QC result is not an error: the exit code
is 0 whatever the statuses; bad input is 2, with no report written."""

from __future__ import annotations

import sys

import numpy as np

from ..errors import MosmosError

HELP = "check a segmentation's organs for plausibility (volume, side, pieces, edges, body, tissue)"


def add_arguments(p) -> None:
    p.add_argument("labelmap", help="label map (.nii/.nii.gz, .nrrd) or DICOM SEG file")
    p.add_argument("--image", required=True, help="the scan it segments (.nii/.nii.gz, .nrrd or DICOM folder)")
    p.add_argument("--labels", metavar="CLASSMAP.json", help="label value -> organ, as {\"1\": \"spleen\", ...} "
                   "(TotalSegmentator's or MOSMOS's names); a DICOM SEG names its own segments")
    p.add_argument("--task", help="which class map of a --labels file holding several (TotalSegmentator's task: "
                   "total, total_mr)")
    p.add_argument("--out", metavar="qc.json", help="write the report: one object per organ")
    p.add_argument("--qc-profile", default="adult", help="reference profile: adult (default) or phantom")
    p.add_argument("--modality", choices=("auto", "CT", "MR"), default="auto",
                   help="the image's modality (auto: CT when it holds air at HU values)")


def run(args) -> int:
    try:
        return _run(args)
    except MosmosError as e:
        print(f"mosmos qc: error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from ..files.outputs import check_output
    from ..inference.io import read_volume
    from ..qc import assess, get_profile, write_report
    from ..inference.labelmaps import is_dicom_seg, onto_grid, organ_name, read_class_map, read_dicom_seg

    profile = get_profile(args.qc_profile)
    if args.out:
        check_output(args.out, "QC report", [args.labelmap, args.image])
    image = read_volume(args.image)
    if is_dicom_seg(args.labelmap):
        labels, names = read_dicom_seg(args.labelmap)
    else:
        labels, names = read_volume(args.labelmap), None
    array = np.asarray(labels.array)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.array_equal(array, np.round(array)) or array.min() < 0:
            raise MosmosError(f"{args.labelmap}: not a label map (values are not whole numbers >= 0)")
        array = array.astype(np.int32)
    labels.array = array
    labelmap = onto_grid(labels, image, args.labelmap)
    present = {int(v) for v in np.unique(labelmap) if v}
    if args.labels:
        names = read_class_map(args.labels, present, args.task)
    elif names is None:
        names = {v: f"label {v}" for v in present}
    unnamed = sorted(present - set(names))
    if unnamed:
        raise MosmosError(f"{args.labelmap}: label values {', '.join(map(str, unnamed[:10]))} are not named")
    ct = (image.modality == "CT") if args.modality == "auto" and image.modality else \
        args.modality == "CT" if args.modality != "auto" else bool(np.percentile(image.array[::4, ::4, ::4], 0.5) < -500)
    results = assess(labelmap, image.affine, [(organ_name(names[v]), v) for v in sorted(present)],
                     np.asarray(image.array), profile, ct)
    for r in results:
        print(f"{r.organ}: {r.volume_ml:.1f} mL (label {r.label}) {r.status}"
              + (": " + "; ".join(r.reasons) if r.reasons else ""))
    if args.out:
        write_report(args.out, results)
    return 0
