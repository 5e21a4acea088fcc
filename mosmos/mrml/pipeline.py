"""Segment a volume node: write it out, run `mosmos segment` in a background process, bring the label map,
attention maps and organ volumes back as MRML nodes. Blocking (console, batch) or step by step (GUI)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

from mosmos.errors import MosmosError
from mosmos.inference.request import SegmentRequest
from mosmos.options import normalize_device

from . import deps
from . import models as modelsLib
from .attention import attention_volume_node
from .process import BackgroundProcess, child_environment, segment_command
from .segmentation import build_segmentation_node
from .tables import organ_volumes_ml, volume_rows, volume_table_node
from .volumes import array_from_volume, ijk_to_ras, read_volume, same_grid, write_volume


@dataclasses.dataclass
class SegmentationOutputs:
    segmentationNode: object
    tableNode: object
    attentionNodes: dict            # tag -> scalar volume node
    organs: list                    # [{"name", "label", "color", "volume_ml", "status", "reasons"}]
    notices: list
    labelmap: object                # (k, j, i) label values of ``organs`` on the input grid


def resolve_model(model, folder=None) -> Path:
    """A model file path from a path, a file name / stem in the models folder, or None (the only model there)."""
    if model:
        path = Path(model).expanduser()
        if path.is_file():
            # Header only: a wrong file fails here in milliseconds, before anything is written or started.
            info = modelsLib.model_info(path)
            if info.kind != "segmentation":
                raise MosmosError(f"{path}: a {info.kind or 'non-segmentation'} model cannot segment; "
                                  "choose a fine-tuned segmentation model")
            return path.resolve()  # the segmentation runs in a child process with its own working folder
    installed = modelsLib.list_models(folder)
    if model:
        for info in installed:
            if str(model) in (info.path.name, info.path.stem):
                return info.path
        names = ", ".join(i.path.name for i in installed) or "none installed"
        raise MosmosError(f"{model}: model file not found (models folder {folder or modelsLib.default_models_dir()}: {names})")
    if len(installed) == 1:
        return installed[0].path
    if not installed:
        raise MosmosError(f"{folder or modelsLib.default_models_dir()}: no segmentation model installed; add a model file")
    raise MosmosError("several models installed; choose one: " + ", ".join(i.path.name for i in installed))


class SegmentationJob:
    """One run. start() -> poll() from a timer (or wait()) -> finish() builds the nodes -> cleanup().
    Keeps the scene untouched until finish(), so a cancelled or failed run leaves nothing behind."""

    def __init__(self, volumeNode, tags=None, model=None, device="auto", attention=False,
                 segmentationNode=None, tableNode=None, modelsFolder=None, fast=False):
        """``fast``: the core's quick preview (fewer, less overlapping windows over the body only)."""
        if volumeNode is None or volumeNode.GetImageData() is None:
            raise MosmosError("input volume: none selected or it has no image data")
        self.volumeNode = volumeNode
        self.tags = [t.strip() for t in (tags.split(",") if isinstance(tags, str) else (tags or [])) if t.strip()]
        self.modelPath = resolve_model(model, modelsFolder)
        self.device = normalize_device(device)
        self.attention = attention
        self.fast = bool(fast)
        self.segmentationNode = segmentationNode
        self.tableNode = tableNode
        self.workDir = Path(tempfile.mkdtemp(prefix="mosmos-segment-"))
        self.inputPath = self.workDir / "input.nii"
        self.outputPath = self.workDir / "segmentation.nii.gz"
        self.attentionDir = self.workDir / "attention" if attention else None
        self.volumesPath = self.workDir / "volumes.json"
        self.process: BackgroundProcess | None = None

    def start(self) -> BackgroundProcess:
        deps.ensure_dependencies()  # the child runs the core: torch, monai, open_clip, nibabel
        # Uncompressed NIfTI: fastest to write and read; nibabel and Slicer agree on its RAS geometry.
        write_volume(self.volumeNode, self.inputPath)
        request = SegmentRequest(model=self.modelPath, input=self.inputPath, output=self.outputPath,
                                 tags=self.tags or None, attention=self.attentionDir, volumes=self.volumesPath,
                                 device=self.device, fast=self.fast, json_progress=True)
        argv = segment_command(request)
        self.process = BackgroundProcess(argv, env=child_environment(self.device), cwd=str(self.workDir)).start()
        return self.process

    def wait(self, progress=None) -> None:
        if self.process is None:
            self.start()
        self.process.wait(progress)

    def finish(self) -> SegmentationOutputs:
        """Read the child's outputs into the scene (call after a successful exit)."""
        steps = self.finish_steps()
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    def finish_steps(self):
        """finish() one step at a time: a generator that pauses after each file read and each node built and
        returns the SegmentationOutputs, so that a caller on an event loop (the web page) serves its other
        requests between steps instead of freezing until all of them are done."""
        self.process.check()
        scene = self.volumeNode.GetScene()
        try:
            summary = json.loads(self.volumesPath.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise MosmosError(f"{self.volumesPath}: segmentation summary missing or unreadable ({e})") from None
        organs = summary.get("organs", [])
        inputShape = tuple(reversed(self.volumeNode.GetImageData().GetDimensions()))
        ijkToRAS = ijk_to_ras(self.volumeNode)
        labelmap = self._readArray(self.outputPath, inputShape, ijkToRAS, labelmap=True)
        yield

        name = f"{self.volumeNode.GetName()} segmentation"
        segNode = build_segmentation_node(scene, labelmap, ijkToRAS, organs, name, self.volumeNode,
                                          self.segmentationNode)
        yield
        rows = volume_rows(organs, organ_volumes_ml(labelmap, ijkToRAS, organs))
        tableNode = volume_table_node(scene, rows, f"{self.volumeNode.GetName()} organ volumes", self.tableNode)
        yield

        attentionNodes = {}
        if self.attentionDir is not None:
            for tag, fileName in (summary.get("attention") or {}).items():
                att = self._readArray(self.attentionDir / fileName, inputShape, ijkToRAS)
                yield
                attentionNodes[tag] = attention_volume_node(scene, att, ijkToRAS, tag, self.volumeNode,
                                                            labelled=tag in {o["name"] for o in organs})
                yield
        return SegmentationOutputs(segNode, tableNode, attentionNodes, organs, list(summary.get("notices", [])),
                                   labelmap)

    def _readArray(self, path: Path, shape, ijkToRAS, labelmap=False):
        scene = self.volumeNode.GetScene()
        node = read_volume(path, scene, "mosmos output", labelmap=labelmap)
        try:
            array, ras = array_from_volume(node)
        finally:
            scene.RemoveNode(node)
        if not same_grid(array.shape, ras, shape, ijkToRAS):
            raise MosmosError(f"{path}: output grid {array.shape} differs from the input volume grid {shape}")
        return array

    def cancel(self, wait: bool = True) -> None:
        if self.process is not None:
            self.process.cancel(wait=wait)

    def cleanup(self) -> None:
        if self.process is not None and self.process.running:
            self.process.cancel()
        shutil.rmtree(self.workDir, ignore_errors=True)


def segment_volume_node(volumeNode, tags=None, model=None, device="auto", attention=False, progress=None,
                        segmentationNode=None, tableNode=None, modelsFolder=None, fast=False) -> SegmentationOutputs:
    """Blocking: segment ``volumeNode`` for ``tags`` (list or "liver, spleen"; None = every organ of the model).
    ``progress(done, total)`` returning False cancels (raises process.Cancelled)."""
    job = SegmentationJob(volumeNode, tags, model, device, attention, segmentationNode, tableNode, modelsFolder, fast)
    try:
        job.wait(progress)
        return job.finish()
    finally:
        job.cleanup()
