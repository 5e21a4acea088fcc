"""One training run in a background process: start, stop (the whole process tree; the last checkpoint stays),
resume (the same command with --resume), events into curves and progress, and the fine-tuned model registered
in MOSMOSSegment's models folder when the run ends. Drained by a GUI timer (``poll``) or blocking (``wait``)."""

from __future__ import annotations

import time
from pathlib import Path

from mosmos.errors import MosmosError
from MOSMOSSegmentLib import deps, models
from MOSMOSSegmentLib.process import BackgroundProcess, child_environment

from .curves import TrainingCurves
from .folders import MODEL_NAMES
from .settings import TrainingSettings

READY, RUNNING, STOPPED, FAILED, FINISHED = "ready", "running", "stopped", "failed", "finished"


def format_duration(seconds) -> str:
    seconds = max(0, int(round(float(seconds))))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def _g(value, digits: int = 4) -> str:
    return f"{value:.{digits}g}" if isinstance(value, (int, float)) else "?"


def describe(event: dict) -> str | None:
    """A log line for people, or None for events that say nothing new."""
    kind = event.get("event")
    if kind == "log":
        return event.get("line") or None
    if kind == "start":
        stage = "pre-training" if event.get("stage") == "pretrain" else "fine-tuning"
        text = (f"{stage}: {event.get('total_steps')} steps ({event.get('steps_per_epoch')} per epoch)"
                f" on {event.get('world_size', 1)} process(es)")
        if event.get("train_pairs") is not None:
            text += f", {event['train_pairs']} training and {event.get('val_pairs')} validation pairs"
        if event.get("resumed_step"):
            text += f"; resumed after step {event['resumed_step']}"
        return text
    if kind == "step":
        parts = [f"{name} {_g(event[name])}" for name in ("irc", "mlr", "seg", "pta") if name in event]
        text = (f"step {event.get('step')}/{event.get('total_steps')} (epoch {event.get('epoch')}): "
                f"loss {_g(event.get('loss'))}")
        if parts:
            text += f" ({', '.join(parts)})"
        text += f", lr {_g(event.get('lr'), 3)}"
        if event.get("eta_s") is not None:
            text += f", ETA {format_duration(event['eta_s'])}"
        return text
    if kind == "val":
        parts = [f"{name} {_g(event[name])}" for name in ("val_loss", "val_map", "val_dice") if name in event]
        return (f"validation after epoch {event.get('epoch')} (step {event.get('step')}): " + ", ".join(parts)
                + (" (best so far: model saved)" if event.get("best") else ""))
    if kind == "checkpoint":
        return f"checkpoint saved at step {event.get('step')}"
    if kind == "done":
        return f"done after step {event.get('step')}: {event.get('model')}"
    return None


class TrainingJob:
    """``job = TrainingJob(settings).start()``; then ``poll()`` from a timer (or ``wait()``), ``stop()``,
    ``resume()``. ``state`` is one of ready, running, stopped, failed, finished; ``curves`` holds the nodes."""

    def __init__(self, settings: TrainingSettings, scene=None, modelsFolder=None, python: str | None = None):
        settings.validate()
        self.settings = settings
        self.modelsFolder = modelsFolder
        self.python = python
        self.curves = TrainingCurves(settings.stage, scene)
        self.process: BackgroundProcess | None = None
        self.state = READY
        self.step = 0
        self.totalSteps: int | None = None
        self.etaSeconds: float | None = None
        self.lastCheckpointStep: int | None = None
        self.modelPath: Path | None = None
        self.registered: models.ModelInfo | None = None
        self.error: str | None = None

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    @property
    def canResume(self) -> bool:
        return not self.running and self.settings.checkpoint.is_file()

    def start(self, resume: bool = False) -> "TrainingJob":
        if self.running:
            raise MosmosError("training: already running")
        if resume and not self.settings.checkpoint.is_file():
            raise MosmosError(f"{self.settings.checkpoint}: no checkpoint to resume from")
        deps.ensure_dependencies()  # the run needs torch, monai, open_clip, nibabel
        argv = self.settings.command(resume=resume, python=self.python)
        self.settings.out.mkdir(parents=True, exist_ok=True)
        self.error = None
        self.process = BackgroundProcess(argv, env=child_environment(self.settings.device)).start()
        self.state = RUNNING
        return self

    def resume(self) -> "TrainingJob":
        return self.start(resume=True)

    def stop(self, wait: bool = True) -> None:
        """Terminate the run and everything it started; returns once they are gone (``wait=False``: at once, and
        the exit event follows). The checkpoint written last stays for Resume."""
        if self.process is not None and self.running:
            self.process.cancel(wait=wait)

    def poll(self) -> list[dict]:
        """Events that arrived since the last call (never blocks), already applied to curves and progress."""
        if self.process is None:
            return []
        events = self.process.poll()
        for event in events:
            self._handle(event)
        return events

    def wait(self, timeout: float | None = None, onEvent=None) -> str:
        """Block until the run ends (or ``timeout`` seconds pass); ``onEvent(event)`` sees every event."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running:
            event = self.process.next_event(0.1)
            if event is not None:
                self._handle(event)
                if onEvent is not None:
                    onEvent(event)
            if deadline is not None and time.monotonic() > deadline:
                break
        return self.state

    @property
    def progress(self) -> float | None:
        return self.step / self.totalSteps if self.totalSteps else None

    def statusText(self) -> str:
        if self.state == RUNNING:
            if not self.totalSteps:
                return "Starting..."
            text = f"Step {self.step} of {self.totalSteps}"
            return text + (f", about {format_duration(self.etaSeconds)} left" if self.etaSeconds is not None else "")
        if self.state == STOPPED:
            where = f" at step {self.lastCheckpointStep}" if self.lastCheckpointStep else ""
            return f"Stopped. Resume continues from the last checkpoint{where}." if self.canResume else "Stopped."
        if self.state == FAILED:
            return f"Failed: {self.error}"
        if self.state == FINISHED:
            text = f"Finished: {self.modelPath}"
            if self.registered is not None:
                text += f"\nAdded to MOSMOSSegment's models as {self.registered.name}"
            return text + (f"\n{self.error}" if self.error else "")
        return "Ready."

    def _handle(self, event: dict) -> None:
        kind = event.get("event")
        self.curves.add(event)
        if kind == "start":
            self.totalSteps = event.get("total_steps")
            self.step = int(event.get("resumed_step") or 0)
            self.etaSeconds = None
        elif kind == "step":
            self.step = int(event.get("step", self.step))
            self.totalSteps = event.get("total_steps", self.totalSteps)
            self.etaSeconds = event.get("eta_s")
        elif kind == "checkpoint":
            self.lastCheckpointStep = event.get("step")
        elif kind == "done":
            self.step = int(event.get("step", self.step))
            if event.get("model"):
                self.modelPath = Path(event["model"])
        elif kind == "exit":
            self._finish()

    def _finish(self) -> None:
        process = self.process
        if process.cancelled:
            self.state = STOPPED
            return
        if process.returncode:
            self.state, self.error = FAILED, process.error_message()
            return
        self.state = FINISHED
        self.etaSeconds = None
        if self.modelPath is None:
            self.modelPath = self.settings.out / MODEL_NAMES[self.settings.stage]
        if self.settings.stage == "finetune":
            self.registerModel()

    def registerModel(self) -> models.ModelInfo | None:
        """Copy the fine-tuned model into MOSMOSSegment's models folder as "<output folder name>.safetensors"
        (every run writes model.safetensors). A pre-trained model cannot segment: it stays in the output folder,
        where fine-tuning picks it up."""
        try:
            name = f"{self.settings.out.name}{self.modelPath.suffix}"
            self.registered = models.add_model_file(self.modelPath, self.modelsFolder, name=name, force=True)
        except MosmosError as e:
            self.error = f"The model could not be added to the models folder: {e}"
        return self.registered
