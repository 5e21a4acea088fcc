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
from . import models as models_lib
from .attention import attention_volume_node
from .process import BackgroundProcess, child_environment, segment_command
from .segmentation import build_segmentation_node
from .tables import organ_volumes_ml, volume_rows, volume_table_node
from .volumes import array_from_volume, ijk_to_ras, read_volume, same_grid, write_volume


@dataclasses.dataclass
class SegmentationOutputs:
    segmentation_node: object
    table_node: object
    attention_nodes: dict            # tag -> scalar volume node
    organs: list                    # [{"name", "label", "color", "volume_ml", "status", "reasons"}]
    notices: list
    labelmap: object                # (k, j, i) label values of ``organs`` on the input grid


def resolve_model(model, folder=None) -> Path:
    """A model file path from a path, a file name / stem in the models folder, or None (the only model there)."""
    if model:
        path = Path(model).expanduser()
        if path.is_file():
            # Header only: a wrong file fails here in milliseconds, before anything is written or started.
            info = models_lib.model_info(path)
            if info.kind != "segmentation":
                raise MosmosError(f"{path}: a {info.kind or 'non-segmentation'} model cannot segment; "
                                  "choose a fine-tuned segmentation model")
            return path.resolve()  # the segmentation runs in a child process with its own working folder
    installed = models_lib.list_models(folder)
    if model:
        for info in installed:
            if str(model) in (info.path.name, info.path.stem):
                return info.path
        names = ", ".join(i.path.name for i in installed) or "none installed"
        raise MosmosError(f"{model}: model file not found (models folder {folder or models_lib.default_models_dir()}: {names})")
    if len(installed) == 1:
        return installed[0].path
    if not installed:
        raise MosmosError(f"{folder or models_lib.default_models_dir()}: no segmentation model installed; add a model file")
    raise MosmosError("several models installed; choose one: " + ", ".join(i.path.name for i in installed))


class SegmentationJob:
    """One run. start() -> poll() from a timer (or wait()) -> finish() builds the nodes -> cleanup().
    Keeps the scene untouched until finish(), so a cancelled or failed run leaves nothing behind."""

    def __init__(self, volume_node, tags=None, model=None, device="auto", attention=False,
                 segmentation_node=None, table_node=None, models_folder=None, fast=False):
        """``fast``: the core's quick preview (fewer, less overlapping windows over the body only)."""
        if volume_node is None or volume_node.GetImageData() is None:
            raise MosmosError("input volume: none selected or it has no image data")
        self.volume_node = volume_node
        self.tags = [t.strip() for t in (tags.split(",") if isinstance(tags, str) else (tags or [])) if t.strip()]
        self.model_file = resolve_model(model, models_folder)
        self.device = normalize_device(device)
        self.attention = attention
        self.fast = bool(fast)
        self.segmentation_node = segmentation_node
        self.table_node = table_node
        self.work_dir = Path(tempfile.mkdtemp(prefix="mosmos-segment-"))
        self.input_path = self.work_dir / "input.nii"
        self.output_path = self.work_dir / "segmentation.nii.gz"
        self.attention_dir = self.work_dir / "attention" if attention else None
        self.volumes_path = self.work_dir / "volumes.json"
        self.process: BackgroundProcess | None = None

    def start(self) -> BackgroundProcess:
        deps.ensure_dependencies()  # the child runs the core: torch, monai, open_clip, nibabel
        # Uncompressed NIfTI: fastest to write and read; nibabel and Slicer agree on its RAS geometry.
        write_volume(self.volume_node, self.input_path)
        request = SegmentRequest(model=self.model_file, input=self.input_path, output=self.output_path,
                                 tags=self.tags or None, attention=self.attention_dir, volumes=self.volumes_path,
                                 device=self.device, fast=self.fast, json_progress=True)
        argv = segment_command(request)
        self.process = BackgroundProcess(argv, env=child_environment(self.device), cwd=str(self.work_dir)).start()
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
        scene = self.volume_node.GetScene()
        try:
            summary = json.loads(self.volumes_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise MosmosError(f"{self.volumes_path}: segmentation summary missing or unreadable ({e})") from None
        organs = summary.get("organs", [])
        input_shape = tuple(reversed(self.volume_node.GetImageData().GetDimensions()))
        ijk_to_ras_matrix = ijk_to_ras(self.volume_node)
        labelmap = self._read_array(self.output_path, input_shape, ijk_to_ras_matrix, labelmap=True)
        yield

        name = f"{self.volume_node.GetName()} segmentation"
        seg_node = build_segmentation_node(scene, labelmap, ijk_to_ras_matrix, organs, name, self.volume_node,
                                          self.segmentation_node)
        yield
        rows = volume_rows(organs, organ_volumes_ml(labelmap, ijk_to_ras_matrix, organs))
        table_node = volume_table_node(scene, rows, f"{self.volume_node.GetName()} organ volumes", self.table_node)
        yield

        attention_nodes = {}
        if self.attention_dir is not None:
            for tag, file_name in (summary.get("attention") or {}).items():
                att = self._read_array(self.attention_dir / file_name, input_shape, ijk_to_ras_matrix)
                yield
                attention_nodes[tag] = attention_volume_node(scene, att, ijk_to_ras_matrix, tag, self.volume_node,
                                                            labelled=tag in {o["name"] for o in organs})
                yield
        return SegmentationOutputs(seg_node, table_node, attention_nodes, organs, list(summary.get("notices", [])),
                                   labelmap)

    def _read_array(self, path: Path, shape, ijk_to_ras_matrix, labelmap=False):
        scene = self.volume_node.GetScene()
        node = read_volume(path, scene, "mosmos output", labelmap=labelmap)
        try:
            array, ras = array_from_volume(node)
        finally:
            scene.RemoveNode(node)
        if not same_grid(array.shape, ras, shape, ijk_to_ras_matrix):
            raise MosmosError(f"{path}: output grid {array.shape} differs from the input volume grid {shape}")
        return array

    def cancel(self, wait: bool = True) -> None:
        if self.process is not None:
            self.process.cancel(wait=wait)

    def cleanup(self) -> None:
        if self.process is not None and self.process.running:
            self.process.cancel()
        shutil.rmtree(self.work_dir, ignore_errors=True)


def segment_volume_node(volume_node, tags=None, model=None, device="auto", attention=False, progress=None,
                        segmentation_node=None, table_node=None, models_folder=None, fast=False) -> SegmentationOutputs:
    """Blocking: segment ``volume_node`` for ``tags`` (list or "liver, spleen"; None = every organ of the model).
    ``progress(done, total)`` returning False cancels (raises process.Cancelled)."""
    job = SegmentationJob(volume_node, tags, model, device, attention, segmentation_node, table_node, models_folder, fast)
    try:
        job.wait(progress)
        return job.finish()
    finally:
        job.cleanup()
