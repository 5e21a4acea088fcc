"""`mosmos segment`: organs named by tags -> a label map (and attention maps, volumes) on the input's grid.

The arguments make a SegmentRequest and mosmos.inference.run does the work (``mosmos.segment`` in Python)."""

from __future__ import annotations

from ..options import AUTO, COMPILE_MODES, PRECISIONS
from ..qc.profiles import PROFILES

HELP = "segment organs named by tags in a CT/MR volume (NIfTI, NRRD or DICOM folder) with a fine-tuned model"


def add_arguments(parser) -> None:
    parser.add_argument("input", nargs="?", help="volume: .nii/.nii.gz, .nrrd, or a DICOM series folder (left out "
                        "with --dicomweb or --inputs)")
    parser.add_argument("--model", required=True, help="MOSMOS segmentation model file")
    parser.add_argument("--output", help="label map to write: .nii.gz, .nii or .nrrd; for a DICOM "
                        "input also a DICOM SEG: a .dcm file, or a folder (the file is named by its SOP Instance "
                        "UID), with a DICOM SR of the organs' volumes and QC beside it (NAME_sr.dcm, or by its UID)")
    add_run_arguments(parser)
    add_dicomweb_arguments(parser)
    cohort = parser.add_argument_group("cohorts (one model load for many cases; shards by RANK/WORLD_SIZE of "
                                       "torchrun or SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT)")
    cohort.add_argument("--inputs", metavar="LIST|DIR", help="a folder of volumes and DICOM series folders, or a "
                        "CSV manifest with a 'path' column (or a 'study' column, and optionally 'series', with "
                        "--dicomweb)")
    cohort.add_argument("--out", metavar="DIR", help="with --inputs: one folder per case (labels.nii.gz, "
                        "volumes.json, attention/) and the cases.csv log; cases already complete are skipped")


def add_run_arguments(parser) -> None:
    """The SegmentRequest's options besides its source, model and output (which each front door names its own
    way), as `mosmos segment` and the headless batch script take them."""
    parser.add_argument("--tags", default=None, help='organ names, e.g. "liver, spleen, kidneys" (default: every '
                        "organ the model labels); names the model was not fine-tuned on give attention maps only")
    parser.add_argument("--series", metavar="UID", help="Series Instance UID to segment when the DICOM folder (or "
                        "the --dicomweb study) holds several series (default: the largest)")
    parser.add_argument("--attention", metavar="DIR",
                        help="write one attention map per tag into DIR: the probability that the organ wins at "
                             "each voxel (open-set tags: that the tag rather than background does), in [0, 1] "
                             "(NIfTI: 16-bit integers with a scale factor, which readers apply)")
    parser.add_argument("--attention-raw", action="store_true",
                        help="with --attention: write the raw up-sampled pixel–tag scores instead of probabilities")
    parser.add_argument("--volumes", metavar="FILE", help="organ volumes (mL) as .json or .csv, with each organ's "
                        "QC status (ok, check, fail) and reasons")
    parser.add_argument("--qc-profile", choices=tuple(PROFILES), help="the QC's reference profile (default: the "
                        "one the model file's training data calls for)")
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


def add_dicomweb_arguments(parser) -> None:
    """--dicomweb, --study and --store (mosmos.inference.dicomweb), as `mosmos segment` and the batch script
    take them."""
    web = parser.add_argument_group("DICOMweb (credentials: MOSMOS_DICOMWEB_TOKEN, or MOSMOS_DICOMWEB_USER and "
                                    "MOSMOS_DICOMWEB_PASSWORD, or a netrc entry for the host)")
    web.add_argument("--dicomweb", metavar="URL", help="DICOMweb service root (e.g. http://pacs:8042/dicom-web) "
                     "to read the series from (QIDO-RS, WADO-RS) instead of an input file or folder")
    web.add_argument("--study", metavar="UID", help="with --dicomweb: the Study Instance UID to segment")
    web.add_argument("--store", action="store_true", help="with --dicomweb: send the DICOM SEG, the SR of "
                     "its organs' volumes and QC (and from `mosmos segment --attention` the attention parametric maps) "
                     "back into the study with STOW-RS")


def run(args) -> int:
    from ..errors import MosmosError
    from ..files.redact import shown_url
    from ..inference.request import SegmentRequest
    from ..inference.run import segment
    from ..qc.segmentation import status_text

    request = SegmentRequest.from_args(args)   # checked here, before torch is imported
    if not (request.cohort or request.output or request.store):   # Python may keep the result in memory only
        raise MosmosError("no output: --output FILE is required" + (" (or --store)" if request.dicomweb else ""))
    written = segment(request)
    if written is None or request.json_progress:   # a cohort logs its cases as they end
        return 0
    for o in written.organs:
        print(f"{o['name']}: {o['volume_ml']:.1f} mL (label {o['label']}) {status_text(o)}")
    if written.output is not None and request.seg_output:
        print(f"DICOM SEG: {written.output}")
        print(f"DICOM SR (organ volumes and QC): {written.report}")
    if request.store:
        print(f"stored in study {request.study} at {shown_url(request.dicomweb)}")
    return 0
