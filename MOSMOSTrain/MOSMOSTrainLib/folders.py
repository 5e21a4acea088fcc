"""What the training folders hold, checked before a run starts, through the same core readers the run uses:
a ROCO folder (usable pairs, images missing or unreadable per split), a segmentation dataset (organs, label
values, cases, per-case problems) and an output folder (a run to resume?). Each check returns a FolderReport
(structured fields for code, ``text`` for people) and never raises for a bad folder.

Opening every ROCO image header or decompressing every label map takes minutes on real data, so a GUI runs the
checks in a background process (FolderCheck: ``python -m MOSMOSTrainLib.folders``) that reports progress as
JSON lines and the reports at the end."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

from mosmos.errors import MosmosError

from mosmos.train.config import CHECKPOINT_NAME  # noqa: F401  (torch-free)
from mosmos.options import CPU, UNET2D, UNETR
MODEL_NAMES = {"pretrain": "pretrained.safetensors", "finetune": "model.safetensors"}


@dataclasses.dataclass
class FolderReport:
    kind: str  # "roco", "dataset" or "output"
    folder: Path | None
    ok: bool
    summary: dict = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)  # what stops training or loses data
    notes: list[str] = dataclasses.field(default_factory=list)  # worth knowing, not blocking
    lines: list[str] = dataclasses.field(default_factory=list)  # what was found, for people

    @property
    def text(self) -> str:
        title = {"roco": "ROCO folder", "dataset": "Dataset", "output": "Output folder"}[self.kind]
        head = f"{title} {self.folder}: {'ready' if self.ok else 'NOT ready'}"
        return "\n".join([head] + [f"  {line}" for line in self.lines]
                         + [f"  problem: {p}" for p in self.problems] + [f"  note: {n}" for n in self.notes])


def given(path) -> Path | None:
    """A path the user set; the parameter node stores an empty path as "."."""
    if path is None or str(path).strip() in ("", "."):
        return None
    return Path(path).expanduser()


def _missing_folder(kind: str, folder, what: str) -> FolderReport | None:
    path = given(folder)
    if path is None:
        return FolderReport(kind, None, False, problems=[f"no {what} selected"])
    if not path.is_dir():
        return FolderReport(kind, path, False, problems=[f"{path}: folder not found"])
    return None


def check_roco(folder, batch_size: int | None = None) -> FolderReport:
    """Usable image-report pairs per split, as pre-training will read them (images header-checked)."""
    from mosmos.data.roco import summarize_roco
    from mosmos.train.config import PretrainConfig

    report = _missing_folder("roco", folder, "ROCO folder")
    if report:
        return report
    root = given(folder)
    try:
        splits = summarize_roco(root)
    except MosmosError as e:
        return FolderReport("roco", root, False, problems=[str(e)])
    report = FolderReport("roco", root, True, summary={"splits": splits})
    for name, c in splits.items():
        line = (f"{name}: {c['usable']} usable pairs of {c['captions']} captions "
                f"({c['missing']} images missing, {c['unreadable']} unreadable")
        line += f", {c['empty_captions']} empty captions)" if c["empty_captions"] else ")"
        report.lines.append(line)
        if c["captions"] and not c["usable"]:
            report.problems.append(f"{name}: no usable pair; the images are fetched by ROCO's own download "
                                   f"script into {Path(c['folder']) / 'images'}")
        elif c["missing"] or c["unreadable"]:
            report.notes.append(f"{name}: {c['missing'] + c['unreadable']} pairs are skipped (image missing or "
                                f"unreadable)")
    # The same choice as the pre-training loop: "train", else every split but "validation".
    train_names = ["train"] if splits.get("train", {}).get("usable") else [n for n in splits if n != "validation"]
    train_pairs = sum(splits[n]["usable"] for n in train_names)
    val_pairs = splits.get("validation", {}).get("usable", 0)
    report.summary.update(train_pairs=train_pairs, validation_pairs=val_pairs)
    if not train_pairs:
        report.problems.append("no usable training pairs")
    elif batch_size and train_pairs < batch_size:
        report.problems.append(f"{train_pairs} usable training pairs, fewer than one batch of {batch_size}")
    if train_pairs and not val_pairs:
        report.notes.append(f"no usable validation split: {PretrainConfig.val_fraction:.0%} of the training pairs "
                            "are held out for validation")
    report.ok = not report.problems
    return report


def check_dataset(folder, label_ratio: float = 1.0, architecture: str = UNETR, progress=None) -> FolderReport:
    """Organs and label values of a Decathlon-layout dataset, its cases, and every case's problems
    (unreadable file, image and label on different grids, undeclared label values, 2D image for a 3D model).
    ``progress(done, total)`` is called after each case."""
    from mosmos.data.decathlon import check_case, label_subset, load_decathlon
    from mosmos.tags import normalize_tag

    report = _missing_folder("dataset", folder, "dataset folder")
    if report:
        return report
    root = given(folder)
    try:
        spec = load_decathlon(root)
    except MosmosError as e:
        return FolderReport("dataset", root, False, problems=[str(e)])
    organs = {value: {"name": spec.label_names[value], "tag": tag,
                      "known": normalize_tag(spec.label_names[value]) is not None}
              for value, tag in sorted(spec.labels.items()) if value != 0}
    problems = []
    try:
        used = len(label_subset(spec.training, label_ratio))
    except MosmosError as e:
        used = 0
        problems.append(str(e))
    report = FolderReport("dataset", root, True, problems=problems, summary={
        "json": str(spec.json_path), "name": spec.name, "modality": spec.modality, "organs": organs,
        "training": len(spec.training), "validation": len(spec.validation), "test": len(spec.test),
        "training_used": used})
    report.lines.append(f"{spec.json_path.name}: {spec.name} ({spec.modality})")
    report.lines.append("organs: " + ", ".join(
        f"{v} = {o['tag']}" + ("" if o["name"] == o["tag"] else f" ({o['name']})") for v, o in organs.items()))
    report.lines.append(f"volumes: {len(spec.training)} training ({used} used with label ratio {label_ratio:g}), "
                        f"{len(spec.validation)} validation, {len(spec.test)} test")
    for o in organs.values():
        if not o["known"]:
            report.notes.append(f"label '{o['name']}' is not a known organ name: it is trained as an open-set tag")
    if not spec.validation:
        report.notes.append("no validation cases listed in the dataset")
    spatial_dims = 2 if architecture == UNET2D else 3
    seen, shapes = set(), set()
    cases = spec.training + spec.validation
    for done, case in enumerate(cases, 1):
        if progress is not None:
            progress(done - 1, len(cases))
        try:
            info = check_case(case, spec.labels, spatial_dims, spec.in_channels)
        except MosmosError as e:
            report.problems.append(str(e))
            continue
        seen.update(info["values"])
        shapes.add(tuple(info["shape"]))
    report.summary["label_values_found"] = sorted(seen)
    if shapes:
        report.lines.append("volume sizes: " + ", ".join("x".join(map(str, s)) for s in sorted(shapes)[:5])
                            + (f" and {len(shapes) - 5} more" if len(shapes) > 5 else ""))
    absent = [f"{v} ({o['tag']})" for v, o in organs.items() if seen and v not in seen]
    if absent:
        report.notes.append(f"label values {', '.join(absent)} appear in no label map")
    report.ok = not report.problems
    return report


def check_output(folder, stage: str) -> FolderReport:
    """Whether the output folder can be written and holds a run to resume or a model that a new run replaces."""
    out = given(folder)
    if out is None:
        return FolderReport("output", None, False, problems=["no output folder selected"])
    report = FolderReport("output", out, True)
    existing = out
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        report.problems.append(f"{out}: cannot be written")
    report.summary["checkpoint"] = (out / CHECKPOINT_NAME).is_file()
    report.summary["model"] = (out / MODEL_NAMES[stage]).is_file()
    if report.summary["checkpoint"]:
        report.lines.append("a checkpoint is there: Resume continues that run; Start begins again and replaces it")
    if report.summary["model"]:
        report.lines.append(f"{MODEL_NAMES[stage]} is there: a new run replaces it")
    if not report.lines:
        report.lines.append("no earlier run")
    report.ok = not report.problems
    return report


def check_stage(stage: str, output, roco=None, batch_size: int | None = None, dataset=None,
                label_ratio: float = 1.0, architecture: str = UNETR, progress=None) -> list[FolderReport]:
    """Reports on the output folder and the stage's input folder (blocking: see FolderCheck)."""
    from mosmos.mrml import deps

    deps.ensure_dependencies()  # the checks read images and label maps (PIL, nibabel)
    reports = [check_output(output, stage)]
    if stage == "pretrain":
        reports.append(check_roco(roco, batch_size=batch_size))
    else:
        reports.append(check_dataset(dataset, label_ratio, architecture, progress=progress))
    return reports


def report_from_dict(d: dict) -> FolderReport:
    d = dict(d)
    d["folder"] = Path(d["folder"]) if d.get("folder") else None
    return FolderReport(**d)


class FolderCheck:
    """check_stage() in a background process: ``start()``, then ``poll()`` from a GUI timer until ``done``;
    ``reports`` holds the FolderReports, ``error`` a one-line message if the check itself failed."""

    def __init__(self, stage: str, **arguments):
        self.arguments = {"stage": stage, **{k: (os.fspath(v) if isinstance(v, Path) else v)
                                             for k, v in arguments.items()}}
        self.process = None
        self.reports: list[FolderReport] = []
        self.error: str | None = None
        self.done = False

    def start(self) -> "FolderCheck":
        from mosmos.mrml import deps
        from mosmos.mrml.process import BackgroundProcess, child_environment, interpreter

        deps.ensure_dependencies()  # here, where a dialog can ask: the child cannot install anything
        env = child_environment(CPU)
        # MOSMOSTrainLib's folder (child_environment already puts the mosmos package's on the path)
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent), env["PYTHONPATH"]])
        argv = [interpreter(), "-m", "MOSMOSTrainLib.folders", json.dumps(self.arguments)]
        self.process = BackgroundProcess(argv, env=env).start()
        return self

    def poll(self) -> list[dict]:
        """Events since the last call (progress, report, exit); never blocks."""
        events = self.process.poll() if self.process is not None else []
        for event in events:
            if event.get("event") == "report":
                self.reports.append(report_from_dict(event["report"]))
            elif event.get("event") == "exit":
                self.done = True
                if self.process.cancelled:
                    self.error = "folder check stopped"
                elif self.process.returncode or not self.reports:
                    self.error = f"folder check failed: {self.process.error_message()}"
        return events

    def cancel(self, wait: bool = True) -> None:
        if self.process is not None:
            self.process.cancel(wait=wait)


def _emit(event: dict) -> None:
    print(json.dumps(event), flush=True)


def main(argv: list[str]) -> int:
    arguments = json.loads(argv[0])
    reports = check_stage(progress=lambda done, total: _emit({"event": "progress", "done": done, "total": total}),
                          **arguments)
    for report in reports:
        _emit({"event": "report", "report": json.loads(json.dumps(dataclasses.asdict(report), default=str))})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
