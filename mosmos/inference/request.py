"""One segmentation run, asked for once: what to read, which organs, what to write, and how.

A SegmentRequest is checked when it is made (one-line MosmosError naming the option, before any work or any
heavy import), and decides once what the outputs are: whether the label map is a DICOM SEG, whether the source
is a DICOM series, which files a run writes. ``mosmos segment`` makes one from its arguments
(``SegmentRequest.from_args``); the Slicer module and the web app hand one to the background process they start
(``to_argv``); a cohort makes one per case (``for_case``). mosmos.inference.run does the work.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import MosmosError
from ..options import AUTO, COMPILE_MODES, PRECISIONS, check_choice, check_number
from ..qc.profiles import PROFILES

if TYPE_CHECKING:   # annotations only
    import argparse

    from .cohort import Case

def is_seg_output(path) -> bool:
    """``--output`` names a DICOM SEG: a .dcm file, or a folder (existing, or written with a trailing slash)."""
    text = str(path)
    return text.lower().endswith(".dcm") or text.endswith(("/", "\\")) or Path(path).is_dir()


@dataclass
class SegmentRequest:
    """A segmentation run: a source (a file or DICOM folder, a DICOMweb study, or a cohort), a model, organs
    and the files to write. Each field is the ``mosmos segment`` option of the same name (``attention_raw`` is
    ``--attention-raw``), with the same default and meaning.

    Args:
        model: the MOSMOS segmentation model file.
        input: a volume (.nii/.nii.gz, .nrrd) or a DICOM series folder (or one of its files); None with
            ``dicomweb`` or ``inputs``.
        output: the label map to write (.nii.gz, .nii, .nrrd), or for a DICOM source a DICOM SEG (a .dcm file,
            or a folder where the file is named by its SOP Instance UID); None to keep the label map in memory
            only (mosmos.inference.run.SegmentOutputs; ``mosmos segment`` asks for an output or ``--store``).
        tags: organ names, a list or a ``"liver, spleen"`` string; None for every organ the model labels.
            Names the model was not fine-tuned on give attention maps only.
        series: the Series Instance UID to segment when the DICOM folder or study holds several.
        attention: a folder for one attention map per tag.
        attention_raw: with ``attention``, the raw up-sampled pixel–tag scores instead of probabilities.
        volumes: a .json or .csv file for the organ volumes (mL), each with its QC status and reasons.
        qc_profile: the QC's reference profile, "adult" or "phantom" (mosmos.qc.profiles); None for the one the
            model file's training data calls for.
        device: "auto", "cpu", "cuda" (or a torch device such as "cuda:1").
        overlap: the sliding-window overlap in [0, 1); None for the mode's default (0.5; 0.25 with ``fast``).
        fast: a quick preview: fewer, less overlapping windows over the body's bounding box only.
        precision: "auto" (bf16 where native, else fp32), "fp32" or "bf16".
        compile: torch.compile on the CPU: "auto", "on" or "off" (mosmos.inference.compilation).
        dicomweb: a DICOMweb service root to read the ``study`` from instead of ``input``.
        study: with ``dicomweb``, the Study Instance UID.
        store: with ``dicomweb``, send the DICOM SEG, its SR (organ volumes and QC) and attention maps back with
            STOW-RS.
        json_progress: JSON-lines progress events on stdout.
        inputs: a cohort: a folder of volumes and DICOM folders, or a CSV manifest (mosmos.inference.cohort).
        out: with ``inputs``, the folder of one folder per case.
    """

    model: str
    input: str | None = None
    output: str | None = None
    tags: str | list[str] | None = None
    series: str | None = None
    attention: str | None = None
    attention_raw: bool = False
    volumes: str | None = None
    qc_profile: str | None = None
    device: str = AUTO
    overlap: float | None = None
    fast: bool = False
    precision: str = AUTO
    compile: str = AUTO
    dicomweb: str | None = None
    study: str | None = None
    store: bool = False
    json_progress: bool = False
    inputs: str | None = None
    out: str | None = None
    # decided once, when the request is made
    seg_output: bool = field(init=False, repr=False, default=False)

    def __post_init__(self) -> None:
        for name in ("model", "input", "output", "attention", "volumes", "inputs", "out"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, os.fspath(value))
        if self.overlap is not None:   # None: the mode's default (segmenter.OVERLAP or FAST_OVERLAP)
            check_number("overlap", self.overlap)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("compile", self.compile, COMPILE_MODES)
        if self.qc_profile is not None:
            check_choice("qc_profile", self.qc_profile, tuple(PROFILES))
        if self.cohort:
            self._check_cohort()
        else:
            self._check_source()
        self.seg_output = bool(self.output) and is_seg_output(self.output)

    @property
    def cohort(self) -> bool:
        return bool(self.inputs or self.out)

    @property
    def dicom(self) -> bool:
        """Whether the run makes DICOM objects: a SEG file, or objects stored with STOW-RS."""
        return self.seg_output or self.store

    @property
    def source_name(self) -> str:
        return str(self.input or self.study)

    def _check_source(self) -> None:
        """Exactly one source: INPUT, or --dicomweb with --study."""
        if self.dicomweb:
            if self.input:
                raise MosmosError(f"{self.input}: give either INPUT or --dicomweb URL --study UID, not both")
            if not self.study:
                raise MosmosError("--dicomweb needs --study UID (the study to segment)")
        elif self.study or self.store:
            raise MosmosError(f"{'--study' if self.study else '--store'} applies to --dicomweb URL only")
        elif not self.input:
            raise MosmosError("no input: give a volume or DICOM folder, --dicomweb URL --study UID, or --inputs "
                              "LIST|DIR")
        if self.attention_raw and not self.attention:
            raise MosmosError("--attention-raw needs --attention DIR (where the maps go)")
        if self.attention_raw and (self.store or (self.output and is_seg_output(self.output))):
            raise MosmosError("--attention-raw: DICOM parametric maps hold probabilities in [0, 1]; "
                              "write raw scores with a .nii.gz or .nrrd --output")

    def _check_cohort(self) -> None:
        from .cohort import LABELS, VOLUMES

        if not (self.inputs and self.out):
            raise MosmosError("--inputs LIST|DIR and --out DIR go together")
        for given, option in ((self.input, "INPUT"), (self.output, "--output"), (self.study, "--study"),
                              (self.volumes, "--volumes")):
            if given:
                raise MosmosError(f"{option} does not apply with --inputs (each case gets OUT/<case>/{LABELS} "
                                  f"and {VOLUMES})")
        if self.store and not self.dicomweb:
            raise MosmosError("--store applies to --dicomweb URL only")
        if self.attention and (Path(self.attention).is_absolute() or len(Path(self.attention).parts) != 1):
            raise MosmosError(f"{self.attention}: with --inputs, --attention names a folder inside each case folder")
        if self.attention_raw and (self.store or not self.attention):
            raise MosmosError("--attention-raw needs --attention NAME and no --store (parametric maps hold "
                              "probabilities)")

    def for_case(self, case: Case, staging: Path) -> SegmentRequest:
        """The request for one case of this cohort, writing its files into the folder ``staging``.

        Args:
            case: the cohort's case (mosmos.inference.cohort.Case): a file or folder, or a study and series.
            staging: the folder the case's files are written into before it is renamed into place.
        """
        from .cohort import LABELS, VOLUMES

        return dataclasses.replace(
            self, inputs=None, out=None, input=str(case.path) if case.path else None, study=case.study,
            series=case.series, output=str(staging / LABELS), volumes=str(staging / VOLUMES),
            attention=str(staging / self.attention) if self.attention else None)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **given: Any) -> SegmentRequest:
        """The request of parsed ``mosmos segment`` arguments.

        Args:
            args: the argparse Namespace of ``mosmos segment`` (mosmos.commands.segment.add_arguments), or of
                another front door that takes its options (add_run_arguments, add_dicomweb_arguments).
            **given: fields that front door decides itself (the headless batch script: input, output, model),
                instead of reading them from ``args``.
        """
        return cls(**{f.name: given[f.name] if f.name in given else getattr(args, f.name)
                      for f in dataclasses.fields(cls) if f.init})

    def to_argv(self) -> list[str]:
        """The ``mosmos segment`` arguments that make this request again (for a child process)."""
        argv = [self.input] if self.input else []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not f.init or f.name == "input" or value is None or value is False or value == f.default:
                continue
            flag = "--" + f.name.replace("_", "-")
            if value is True:
                argv.append(flag)
            else:
                argv += [flag, ", ".join(value) if isinstance(value, (list, tuple)) else str(value)]
        return argv
