"""The GPU path checked in one go: correctness, the out-of-memory path and speed against the peers, one JSON object.

On one NVIDIA GPU it runs in a few minutes (at most 8) and prints the GPU's name, torch's and CUDA's versions and,
per item, its figures, "status" ("passed", "failed" with a one-line "error", or "skipped" with a "reason"):

- device_auto: ``--device auto`` picks the GPU (in this process and, for the Slicer modules' choices "auto" and
  "cpu", in a child started with their environment, mosmos.mrml.process.child_environment);
- finetune: ``mosmos finetune`` of a ViT-B/16 MOSMOS-UNETR on generated phantoms, killed after its first
  checkpoint and resumed to 20 steps: finite losses, the run on the GPU, a model file;
- pretrain: the same for ``mosmos pretrain`` (ViT-B/16, bf16) on generated phantom slices with reports;
- torchrun: a 1-process ``torchrun`` fine-tune, which joins an NCCL process group (DDP);
- segment: ``mosmos segment`` of a phantom on the GPU in bf16 against the CPU's fp32 run of the same model, both
  started as the Slicer module starts them: label agreement >= 99.5 %, attention maps within MAP_TOLERANCE;
- out_of_memory: ``mosmos segment`` of a 512x512x200 CT with the process's GPU memory capped
  (torch.cuda.set_per_process_memory_fraction): it still segments, with a one-line notice of what was reduced,
  never a traceback;
- segment_speed: that CT end to end with ``mosmos segment`` against plain MONAI (LoadImage, Spacing,
  ScaleIntensityRange, sliding_window_inference of the same network, argmax, back to the CT's grid, nibabel save);
- finetune_speed: the fine-tune's steps (data loading included) against a plain MONAI UNETR step of the same size;
- pretrain_speed: the pre-training's images/s against a plain open_clip contrastive (ClipLoss) step.

A failing item does not stop the others. ``--cpu-smoke`` runs the same code at tiny sizes on the CPU (gloo instead
of NCCL, fp32 against fp32, out_of_memory skipped: it needs a GPU; independent items side by side); the test suite
runs it.

    python benchmarks/gpu_check.py [--cpu-smoke] [--keep DIR] [--only ITEM ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]  # this checkout's mosmos; timing.py

import numpy as np  # noqa: E402
import torch  # noqa: E402

MIN_LABEL_AGREEMENT = 0.995
# bf16 keeps 8 significant bits; the maps are soft-maxed scores divided by the model's epsilon, which scales
# a score's rounding up: a stated bound on the typical and on the rare voxel rather than on the worst one
MAP_TOLERANCE = {"mean_abs": 0.01, "p999_abs": 0.1}
OOM_CAPS = (0.5, 0.75)  # GPU memory caps, as fractions of an uncapped run's peak
CAPPED_SEGMENT = """
import json, sys, torch
cap = int(sys.argv[1])
if cap:
    torch.cuda.set_per_process_memory_fraction(cap / torch.cuda.get_device_properties(0).total_memory)
from mosmos.cli import main
code = main(sys.argv[2:])
print(json.dumps({"peak_reserved_bytes": torch.cuda.max_memory_reserved()}), file=sys.stderr)
sys.exit(code)
"""


@dataclass(frozen=True)
class Sizes:
    """What each item runs on: a GPU's real sizes, or the smoke's tiny ones."""
    backbone: str
    roi: int
    feature_size: int
    spacing: tuple[float, float, float]
    train_shape: tuple[int, int, int]
    train_cases: int  # several: each epoch starts the loader's workers anew
    organs: tuple[str, ...] | None
    crops: int
    lr: float
    steps: int
    checkpoint_every: int
    torchrun_steps: int
    workers: int
    segment_shape: tuple[int, int, int]
    ct_shape: tuple[int, int, int]
    ct_spacing: tuple[float, float, float]
    pretrain_backbone: str
    pretrain_batch: int
    pretrain_pairs: int
    baseline_steps: int
    timeout: float  # seconds for one command at most
    budget: float   # seconds for the whole check: items not started by then are reported as not run


GPU = Sizes(backbone="ViT-B-16", roi=96, feature_size=16, spacing=(1.5, 1.5, 2.0), train_shape=(128, 128, 96),
            train_cases=4, organs=None, crops=2, lr=1e-4, steps=20, checkpoint_every=5, torchrun_steps=4, workers=4,
            segment_shape=(144, 144, 112), ct_shape=(512, 512, 200), ct_spacing=(0.8, 0.8, 2.5),
            pretrain_backbone="ViT-B-16", pretrain_batch=32, pretrain_pairs=320, baseline_steps=10, timeout=300,
            budget=480)
SMOKE = Sizes(backbone="tiny-vit", roi=32, feature_size=8, spacing=(6.0, 6.0, 6.0), train_shape=(32, 32, 32),
              train_cases=1, organs=("liver", "spleen", "right kidney", "left kidney"), crops=2, lr=1e-2, steps=4,
              checkpoint_every=2, torchrun_steps=1, workers=0, segment_shape=(40, 40, 32), ct_shape=(48, 48, 24),
              ct_spacing=(4.0, 4.0, 8.0), pretrain_backbone="tiny-vit", pretrain_batch=8, pretrain_pairs=24,
              baseline_steps=2, timeout=240, budget=1200)


class Failed(Exception):
    """An item's check did not hold (its message is the item's one-line error)."""


class Skipped(Exception):
    """The item cannot run here (its message says why)."""


@dataclass
class Run:
    """One check: the sizes, whether it is on a GPU, its work folder and what items hand on to later ones."""
    sizes: Sizes
    cuda: bool
    work: Path
    shared: dict = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @property
    def device(self) -> str:
        return "cuda" if self.cuda else "cpu"

    def time_left(self) -> float:
        return self.sizes.budget - (time.perf_counter() - self.started)

    def timeout(self) -> float:
        """For the next command: its limit, or what is left of the check's budget (at least 30 s)."""
        return min(self.sizes.timeout, max(30.0, self.time_left()))


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def environment(device: str = "auto") -> dict[str, str]:
    from mosmos.mrml.process import child_environment

    return child_environment(device)


def ran(cmd: list[str], what: str, run: Run, env: dict | None = None) -> subprocess.CompletedProcess:
    """``cmd`` to its end; Failed with its last stderr line when it fails or prints a traceback."""
    try:
        limit = run.timeout()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, env=env or environment())
    except subprocess.TimeoutExpired:
        raise Failed(f"{what}: still running after {limit:.0f} s") from None
    check("Traceback (most recent call last)" not in done.stderr,
          f"{what} printed a traceback: {last_line(done.stderr)}")
    check(done.returncode == 0, f"{what} exited {done.returncode}: {last_line(done.stderr)}")
    return done


def mosmos(*args: str) -> list[str]:
    return [sys.executable, "-m", "mosmos", *args]


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# --- training -------------------------------------------------------------------------------------------------

def training_data(run: Run) -> Path:
    from mosmos.data.phantoms import write_decathlon_dataset

    folder = run.work / "phantoms"
    if not (folder / "dataset.json").exists():
        s = run.sizes
        write_decathlon_dataset(folder, s.train_cases, 0, seed=0, shape=s.train_shape, spacing=s.spacing,
                                organs=s.organs)
    return folder


def finetune_args(run: Run, out: Path, log: Path, steps: int, *more: str) -> list[str]:
    s = run.sizes
    return ["finetune", "--data", str(training_data(run)), "--out", str(out), "--backbone", s.backbone,
            "--init", "random", "--epochs", str(10**6), "--max-steps", str(steps), "--batch-size", "1",
            "--num-samples", str(s.crops),
            "--lr", str(s.lr), "--warmup-steps", "2", "--roi-size", *[str(s.roi)] * 3,
            "--spacing", *map(str, s.spacing), "--feature-size", str(s.feature_size), "--val-every", str(10**6),
            "--workers", str(s.workers), "--checkpoint-every", str(s.checkpoint_every), "--log-every", "1",
            "--device", "auto", "--events", str(log), "--no-progress", *more]


def killed_and_resumed(run: Run, args: list[str], log: Path, what: str) -> dict:
    """``mosmos *args`` SIGKILLed once it has written a checkpoint before its last step, then the same with
    --resume to its end: the figures of its events (steps, losses, where it ran, seconds per step)."""
    proc = subprocess.Popen(mosmos(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=environment())
    deadline = time.time() + run.timeout()
    try:
        while proc.poll() is None and time.time() < deadline:
            ev = events(log)
            start = next((e for e in ev if e["event"] == "start"), None)
            if start and any(e["event"] == "checkpoint" and e["step"] < start["total_steps"] for e in ev):
                break
            time.sleep(0.05)
    finally:
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        stderr = proc.communicate()[1]
    check(killed or proc.returncode == 0, f"{what} exited {proc.returncode}: {last_line(stderr)}")
    ran(mosmos(*args, "--resume"), f"{what} --resume", run)
    ev = events(log)
    starts = [e for e in ev if e["event"] == "start"]
    done = [e for e in ev if e["event"] == "done"]
    check(bool(starts and done), f"{what}: no start or done event in {log}")
    steps = [e for e in ev if e["event"] == "step"]
    losses = [e["loss"] for e in steps]
    check(all(math.isfinite(x) for x in losses), f"{what}: a loss is not finite: {losses}")
    check(done[-1]["step"] == starts[-1]["total_steps"], f"{what}: ended at step {done[-1]['step']}, "
          f"not {starts[-1]['total_steps']}")
    check(len(starts) == 2 and starts[-1]["resumed_step"] > 0, f"{what}: did not resume from a checkpoint")
    check(starts[-1]["device"].startswith(run.device), f"{what}: ran on {starts[-1]['device']}, not {run.device}")
    # seconds per step of the resumed run: the median gap between its step events (a validation, a checkpoint
    # or a new epoch's loader lengthens a few)
    resumed = [e["time"] for e in ev[ev.index(starts[-1]):] if e["event"] == "step"]
    gaps = [b - a for a, b in zip(resumed[1:], resumed[2:])] or [b - a for a, b in zip(resumed, resumed[1:])]
    return {"steps": done[-1]["step"], "killed_at_step": max(e["step"] for e in steps if e["time"] < starts[-1]["time"])
            if killed else None, "resumed_at_step": starts[-1]["resumed_step"], "device": starts[-1]["device"],
            "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4),
            "step_s": round(statistics.median(gaps), 4) if gaps else None}


def item_finetune(run: Run) -> dict:
    out, log = run.work / "finetune", run.work / "finetune.jsonl"
    figures = killed_and_resumed(run, finetune_args(run, out, log, run.sizes.steps), log, "mosmos finetune")
    model = out / "model.safetensors"
    check(model.exists(), f"mosmos finetune wrote no {model.name}")
    run.shared.update(model=model, finetune_step_s=figures["step_s"])
    return figures


def item_pretrain(run: Run) -> dict:
    from mosmos.data.phantoms import write_roco_folder

    s = run.sizes
    roco = write_roco_folder(run.work / "roco", s.pretrain_pairs, seed=1, split_fractions=(0.9, 0.1))
    out, log = run.work / "pretrain", run.work / "pretrain.jsonl"
    args = ["pretrain", "--roco", str(roco), "--out", str(out), "--backbone", s.pretrain_backbone,
            "--epochs", str(10**6), "--max-steps", str(s.steps), "--batch-size", str(s.pretrain_batch),
            "--lr", "1e-4", "--warmup-steps", "2", "--workers", str(s.workers),
            "--precision", "bf16" if run.cuda else "fp32", "--checkpoint-every", str(s.checkpoint_every),
            "--log-every", "1", "--device", "auto", "--events", str(log), "--no-progress"]
    figures = killed_and_resumed(run, args, log, "mosmos pretrain")
    check((out / "pretrained.safetensors").exists(), "mosmos pretrain wrote no pretrained.safetensors")
    figures["images_per_s"] = round(s.pretrain_batch / figures["step_s"], 1) if figures["step_s"] else None
    run.shared.update(pretrain_images_per_s=figures["images_per_s"])
    return figures


def item_torchrun(run: Run) -> dict:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    check(torchrun is not None, "no torchrun next to this Python")
    out, log = run.work / "torchrun", run.work / "torchrun.jsonl"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "1", "-m", "mosmos",
           *finetune_args(run, out, log, run.sizes.torchrun_steps)]
    ran(cmd, "torchrun mosmos finetune", run)
    ev = events(log)
    start, done = ev[0], ev[-1]
    expected = "nccl" if run.cuda else "gloo"
    check(start.get("backend") == expected, f"torchrun: process group backend {start.get('backend')}, "
          f"not {expected}")
    check(done["event"] == "done" and len(done["rank_digests"]) == 1, "torchrun: the run did not end")
    losses = [e["loss"] for e in ev if e["event"] == "step"]
    check(all(math.isfinite(x) for x in losses), f"torchrun: a loss is not finite: {losses}")
    return {"backend": start["backend"], "world_size": start["world_size"], "device": start["device"],
            "steps": done["step"]}


def item_device_auto(run: Run) -> dict:
    """auto here and in children with the Slicer modules' environments for "auto" and "cpu"."""
    from mosmos.inference.segmenter import resolve_device
    from mosmos.train.distributed import resolve_device as training_device

    probe = "from mosmos.train.distributed import resolve_device; print(resolve_device('auto'))"
    children = {choice: subprocess.Popen([sys.executable, "-c", probe], stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, env=environment(choice))
                for choice in ("auto", "cpu")}
    try:
        seen = {f"slicer_{choice}": p.communicate(timeout=run.timeout())[0].strip() for choice, p in children.items()}
    finally:
        for p in children.values():
            p.kill()  # where one still runs (a timeout); a no-op on an ended one
    seen.update(segment_auto=str(resolve_device("auto")), training_auto=str(training_device("auto")))
    expected = {"segment_auto": run.device, "training_auto": run.device, "slicer_auto": run.device,
                "slicer_cpu": "cpu"}
    wrong = [f"{k} chose {seen[k] or 'nothing'}" for k, v in expected.items() if not seen[k].startswith(v)]
    check(not wrong, f"expected {run.device}: " + ", ".join(wrong))
    return seen


# --- segmentation ---------------------------------------------------------------------------------------------

def model_of(run: Run) -> Path:
    model = run.shared.get("model")
    if model is None:
        raise Failed("needs the finetune item's model, which it did not write")
    return model


def write_ct(run: Run, name: str, shape, spacing) -> Path:
    from mosmos.data.phantoms import make_phantom
    from mosmos.inference.io import write_volume

    path = run.work / f"{name}.nii.gz"
    if not path.exists():
        phantom = make_phantom(7, shape, spacing)
        write_volume(path, np.round(phantom.image).astype(np.int16), phantom.affine)
    return path


def segment(run: Run, ct: Path, out: Path, device: str, precision: str, attention: bool = False,
            cap: int | None = None) -> dict:
    """``mosmos segment`` of ``ct`` as the Slicer module starts it (mosmos.mrml.process), with ``cap`` bytes of
    GPU memory at most where given; its wall time, --json-progress events and stderr."""
    from mosmos.inference.request import SegmentRequest
    from mosmos.mrml.process import segment_command

    out.mkdir(parents=True, exist_ok=True)
    request = SegmentRequest(model=str(model_of(run)), input=str(ct), output=str(out / "labels.nii.gz"),
                             attention=str(out / "attention") if attention else None, device=device,
                             precision=precision, json_progress=True)
    argv = segment_command(request, python=sys.executable)
    if cap is not None:
        argv = [sys.executable, "-c", CAPPED_SEGMENT, str(cap), *argv[3:]]
    start = time.perf_counter()
    done = ran(argv, f"mosmos segment --device {device}", run, env=environment(device))
    seconds = time.perf_counter() - start
    ev = json_lines(done.stdout)
    return {"seconds": seconds, "events": ev, "stderr": done.stderr,
            "stages": {e["stage"]: e["seconds"] for e in ev if e["event"] == "stage"},
            "run": next((e for e in ev if e["event"] == "run"), {}),
            "notices": [e["message"] for e in ev if e["event"] == "notice"]}


def item_segment(run: Run) -> dict:
    """The GPU's bf16 run against the CPU's fp32 run of the same model and phantom (smoke: fp32 against fp32)."""
    import nibabel as nib

    s = run.sizes
    model_of(run)  # before any work
    ct = write_ct(run, "phantom", s.segment_shape, s.spacing)
    precision = "bf16" if run.cuda else "fp32"
    reference = segment(run, ct, run.work / "segment-cpu", "cpu", "fp32", attention=True)
    tested = segment(run, ct, run.work / f"segment-{run.device}", run.device, precision, attention=True)
    check(tested["run"].get("precision") == precision, f"ran in {tested['run'].get('precision')}, not {precision}")
    a = np.asarray(nib.load(run.work / "segment-cpu" / "labels.nii.gz").dataobj)
    b = np.asarray(nib.load(run.work / f"segment-{run.device}" / "labels.nii.gz").dataobj)
    agreement = float(np.mean(a == b))
    organs_a, organs_b = a > 0, b > 0
    both = int(organs_a.sum() + organs_b.sum())
    worst = {"mean_abs": 0.0, "p999_abs": 0.0, "max_abs": 0.0}
    maps = sorted(p.name for p in (run.work / "segment-cpu" / "attention").iterdir())
    for name in maps:
        diff = np.abs(nib.load(run.work / "segment-cpu" / "attention" / name).get_fdata(dtype=np.float32)
                      - nib.load(run.work / f"segment-{run.device}" / "attention" / name).get_fdata(dtype=np.float32))
        for key, value in (("mean_abs", diff.mean()), ("p999_abs", np.quantile(diff, 0.999)), ("max_abs", diff.max())):
            worst[key] = max(worst[key], round(float(value), 5))
    figures = {"compared": f"{run.device} {precision} against cpu fp32", "label_agreement": round(agreement, 6),
               "organ_voxels_dice": round(2 * int((organs_a & organs_b).sum()) / both, 4) if both else None,
               "organ_voxels": [int(organs_a.sum()), int(organs_b.sum())], "attention_maps": len(maps),
               "attention_difference": worst, "attention_tolerance": MAP_TOLERANCE,
               "reference_s": round(reference["seconds"], 2), "tested_s": round(tested["seconds"], 2)}
    check(agreement >= MIN_LABEL_AGREEMENT, f"labels agree at {agreement:.4%} of the voxels, under "
          f"{MIN_LABEL_AGREEMENT:.1%}")
    check(bool(maps), "no attention maps were written")
    over = [k for k, v in MAP_TOLERANCE.items() if worst[k] > v]
    check(not over, f"attention maps differ beyond the tolerance: {worst}")
    return figures


def item_out_of_memory(run: Run) -> dict:
    """The CT segments under caps of GPU memory below what an uncapped run takes."""
    if not run.cuda:
        raise Skipped("needs a CUDA GPU (the fallback answers a GPU's memory running out)")
    model_of(run)
    ct = write_ct(run, "ct", run.sizes.ct_shape, run.sizes.ct_spacing)
    free = segment(run, ct, run.work / "oom-uncapped", "cuda", "bf16", cap=0)
    peak = json_lines(free["stderr"])[-1]["peak_reserved_bytes"]
    figures = {"uncapped_peak_gb": round(peak / 2**30, 2), "caps": []}
    for fraction in OOM_CAPS:
        cap = int(peak * fraction)
        row = {"cap_gb": round(cap / 2**30, 2)}
        try:
            result = segment(run, ct, run.work / f"oom-{fraction}", "cuda", "bf16", cap=cap)
            short = [n for n in result["notices"] if n.startswith("GPU memory was short")]
            row.update(segmented=True, notice=short[0] if short else None, seconds=round(result["seconds"], 1))
        except Failed as e:
            row.update(segmented=False, error=str(e))
        figures["caps"].append(row)
    check(not any("traceback" in row.get("error", "") for row in figures["caps"]),
          f"a capped run printed a traceback: {figures['caps']}")
    check(any(row["segmented"] and row["notice"] for row in figures["caps"]),
          f"no capped run segmented with a notice of what was reduced: {figures['caps']}")
    return figures


# --- speed against the peers, each baseline in this process -------------------------------------------------

def monai_segment(ct: Path, model: Path, out: Path, device: torch.device, bf16: bool) -> dict:
    """Plain MONAI end to end with the same network: seconds in all and in sliding_window_inference."""
    import nibabel as nib
    import torch.nn.functional as F
    from monai.inferers import sliding_window_inference
    from monai.transforms import LoadImage, ScaleIntensityRange, Spacing

    from mosmos.inference.network import load_segmentation_model, roi_size_of
    from mosmos.inference.preprocess import Preprocessing

    def synced() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    start = synced()
    network, header = load_segmentation_model(model, device)
    pre = Preprocessing.from_header(header)
    image = LoadImage(image_only=True, ensure_channel_first=True)(str(ct)).to(device)
    with torch.inference_mode():
        x = Spacing(pixdim=pre.spacing, mode="bilinear")(image.float())
        x = ScaleIntensityRange(pre.a_min, pre.a_max, pre.b_min, pre.b_max, clip=pre.clip)(x)
        windows = synced()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = sliding_window_inference(x[None].as_tensor(), roi_size_of(network, header), 4 if bf16 else 1,
                                              lambda w: network(w)[0], overlap=0.5, mode="gaussian")
        windows = synced() - windows
        labels = logits.argmax(1, keepdim=True).float()
        labels = F.interpolate(labels, size=tuple(image.shape[1:]), mode="nearest")[0, 0].to(torch.uint8).cpu().numpy()
    nib.save(nib.Nifti1Image(labels, image.affine.cpu().numpy()), str(out))
    return {"seconds": synced() - start, "windows_s": windows}


def item_segment_speed(run: Run) -> dict:
    s = run.sizes
    model_of(run)
    ct = write_ct(run, "ct", s.ct_shape, s.ct_spacing)
    precision = "bf16" if run.cuda else "fp32"
    ours = segment(run, ct, run.work / "speed-mosmos", run.device, precision)
    (run.work / "speed-monai").mkdir(exist_ok=True)
    theirs = monai_segment(ct, model_of(run), run.work / "speed-monai" / "labels.nii.gz", torch.device(run.device),
                           run.cuda)
    return {"ct_shape": list(s.ct_shape), "ct_spacing": list(s.ct_spacing), "precision": precision,
            "mosmos_segment_s": round(ours["seconds"], 2), "mosmos_stages_s": ours["stages"],
            "mosmos_stages_over_monai": round(sum(ours["stages"].values()) / theirs["seconds"], 3),
            "mosmos_windows": ours["run"].get("windows"), "mosmos_windows_skipped": ours["run"].get("windows_skipped"),
            "monai_s": round(theirs["seconds"], 2), "monai_sliding_window_s": round(theirs["windows_s"], 2),
            "mosmos_over_monai": round(ours["seconds"] / theirs["seconds"], 3),
            "note": "mosmos_over_monai: mosmos segment as a process of its own (start and imports included) "
                    "against MONAI in this process, model load to nibabel save; mosmos_stages_over_monai: the sum "
                    "of its --json-progress stages (model load to write) against the same"}


def vision_width(backbone: str) -> tuple[int, int, int]:
    """(hidden size, heads, MLP size) of the backbone's ViT, for a MONAI UNETR of the same size."""
    import open_clip

    import mosmos.models.backbones  # noqa: F401  (registers mosmos's tiny configs with open_clip)

    vision = open_clip.get_model_config(backbone)["vision_cfg"]
    width = int(vision["width"])
    return width, width // int(vision.get("head_width", 64)), int(width * float(vision.get("mlp_ratio", 4.0)))


def item_finetune_speed(run: Run) -> dict:
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNETR
    from timing import timed_steps

    from mosmos.files.modelfile import read_header

    ours = run.shared.get("finetune_step_s")
    check(ours is not None, "needs the finetune item's step times")
    s = run.sizes
    device = torch.device(run.device)
    classes = len(read_header(model_of(run))["labels"])
    hidden, heads, mlp = vision_width(s.backbone)
    plain = UNETR(in_channels=1, out_channels=classes, img_size=s.roi, feature_size=s.feature_size,
                  hidden_size=hidden, mlp_dim=mlp, num_heads=heads, norm_name="instance", res_block=True).to(device)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.AdamW(plain.parameters(), s.lr)
    x = torch.randn(s.crops, 1, *[s.roi] * 3, device=device)
    y = torch.randint(0, classes, (s.crops, 1, *[s.roi] * 3), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.cuda):
            out = plain(x)
        value = loss(out.float(), y)
        optimiser.zero_grad(set_to_none=True)
        value.backward()
        optimiser.step()

    theirs = timed_steps(step, s.baseline_steps, device)
    return {"crops_per_step": s.crops, "roi": s.roi, "backbone": s.backbone, "mosmos_finetune_step_s": ours,
            "monai_unetr_step_s": round(theirs, 4), "mosmos_over_monai": round(ours / theirs, 3),
            "note": "mosmos: median gap between mosmos finetune's step events (data loading included); MONAI: "
                    "the network, Dice+CE and AdamW on crops already on the device"}


def item_pretrain_speed(run: Run) -> dict:
    import open_clip
    from timing import timed_steps

    import mosmos.models.backbones  # noqa: F401  (registers mosmos's tiny configs with open_clip)

    ours = run.shared.get("pretrain_images_per_s")
    check(ours is not None, "needs the pretrain item's step times")
    s = run.sizes
    device = torch.device(run.device)
    model = open_clip.create_model(s.pretrain_backbone, output_dict=True).to(device)
    loss = open_clip.ClipLoss()
    optimiser = torch.optim.AdamW(model.parameters(), 1e-4, weight_decay=0.1)
    size = model.visual.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    images = torch.randn(s.pretrain_batch, 3, *size, device=device)
    tokens = open_clip.get_tokenizer(s.pretrain_backbone)(
        ["Axial contrast-enhanced CT of the abdomen showing the liver and both kidneys."] * s.pretrain_batch).to(device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.cuda):
            out = model(images, tokens)
        value = loss(out["image_features"].float(), out["text_features"].float(), out["logit_scale"].float())
        optimiser.zero_grad(set_to_none=True)
        value.backward()
        optimiser.step()

    theirs = s.pretrain_batch / timed_steps(step, s.baseline_steps, device)
    return {"backbone": s.pretrain_backbone, "batch": s.pretrain_batch, "precision": "bf16" if run.cuda else "fp32",
            "mosmos_pretrain_images_per_s": ours, "open_clip_images_per_s": round(theirs, 1),
            "mosmos_over_open_clip": round(ours / theirs, 3),
            "note": "mosmos: mosmos pretrain's steps (ROCO-layout JPEGs through its loader, L_irc + L_mlr); "
                    "open_clip: ClipLoss on images already on the device"}


ITEMS = {"device_auto": item_device_auto, "finetune": item_finetune, "pretrain": item_pretrain,
         "torchrun": item_torchrun, "segment": item_segment, "out_of_memory": item_out_of_memory,
         "segment_speed": item_segment_speed, "finetune_speed": item_finetune_speed,
         "pretrain_speed": item_pretrain_speed}


# Items that need no other item's results run in a chain of their own.
CHAINS = (("device_auto", "torchrun"), ("finetune", "segment", "out_of_memory", "segment_speed", "finetune_speed"),
          ("pretrain", "pretrain_speed"))


def run_item(name: str, run: Run) -> dict:
    start = time.perf_counter()
    if run.time_left() <= 0:
        return {"status": "failed", "error": f"not run: the check's {run.sizes.budget:.0f} s were spent", "seconds": 0}
    try:
        result = {"status": "passed", **ITEMS[name](run)}
    except Skipped as e:
        result = {"status": "skipped", "reason": str(e)}
    except Failed as e:
        result = {"status": "failed", "error": str(e)}
    except Exception as e:  # an item's bug or a library's error: reported, and the other items still run
        result = {"status": "failed", "error": f"{type(e).__name__}: {last_line(str(e)) or repr(e)}"}
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def gpu_check(smoke: bool, work: Path, only: list[str] | None = None) -> dict:
    cuda = torch.cuda.is_available() and not smoke
    run = Run(SMOKE if smoke else GPU, cuda, work)
    start = time.perf_counter()
    report = {"check": "gpu", "mode": "cpu-smoke" if smoke else "gpu",
              "device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
              "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
              "items": {}}
    if not smoke and not cuda:
        report["items"] = {name: {"status": "failed", "error": "no CUDA GPU here (use --cpu-smoke on a CPU)"}
                           for name in only or ITEMS}
    else:
        names = only or list(ITEMS)
        # On the GPU one item at a time (the timings); the smoke's chains side by side, as most of its time is
        # each command's start-up (imports) on one core
        chains = [[n for n in chain if n in names] for chain in CHAINS] if smoke else [names]
        with ThreadPoolExecutor(len(chains)) as pool:
            done = dict(item for chain in pool.map(lambda c: [(n, run_item(n, run)) for n in c], chains)
                        for item in chain)
        report["items"] = {name: done[name] for name in names}
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["within_budget"] = report["seconds"] <= run.sizes.budget
    report["passed"] = all(item["status"] != "failed" for item in report["items"].values())
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (what the test suite runs)")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary folder)")
    ap.add_argument("--only", nargs="+", choices=list(ITEMS), help="run these items only (in the usual order)")
    args = ap.parse_args(argv)
    only = [name for name in ITEMS if name in args.only] if args.only else None
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        report = gpu_check(args.cpu_smoke, Path(args.keep), only)
    else:
        with tempfile.TemporaryDirectory(prefix="mosmos-gpu-check-") as work:
            report = gpu_check(args.cpu_smoke, Path(work), only)
    print(json.dumps(report, indent=1))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
