"""One browser session's work on its own MRML scene: open a volume, segment it in a background process with
mosmos.mrml's pipeline, show the segments and attention overlays, and export the results. No trame here:
the page (app.py) only translates widgets to these calls."""

from __future__ import annotations

import functools
import io
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from mosmos.errors import MosmosError
from mosmos.inference import io as coreio
from mosmos.inference.dicom import DicomSource
from mosmos.inference.dicomseg import segmentation_dataset
from mosmos.inference.tagselect import select_tags
from mosmos.files.modelfile import verify_model
from mosmos.mrml import models as models_lib
from mosmos.mrml import pipeline, segmentation, volumes
from mosmos.mrml.attention import attention_color_node

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr")
# Smallest extent a volume needs along every axis: 3D windows cannot be slid over a single image.
MIN_SLICES = 2
# A zipped DICOM series may unpack to at most this many times the upload limit, in at most MAX_ZIP_FILES files:
# DICOM compresses 2-4 times in a zip, while a crafted archive of 1 MB can unpack to gigabytes.
UNZIP_FACTOR = 10
MAX_ZIP_FILES = 20_000
UNZIP_CHUNK = 1 << 20


def data_files(folder: str | Path | None) -> list[Path]:
    """Volumes (and zipped DICOM series) in the server-side data folder the app was started with."""
    if not folder or not Path(folder).is_dir():
        return []
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES + (".zip",)))


def unpack_zip(path: Path, folder: Path, max_bytes: int | None = None,
               max_files: int = MAX_ZIP_FILES) -> None:
    """Unpack the archive ``path`` into ``folder``, counting the bytes as they are written (the sizes an archive
    declares can lie) and refusing it, with one line, past ``max_bytes`` in all or ``max_files`` files. Members'
    paths keep their folders but can only land inside ``folder``."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            if len(members) > max_files:
                raise MosmosError(f"{path.name}: {len(members)} files in the zip archive, more than the "
                                  f"{max_files} this server unpacks")
            written = 0
            for number, member in enumerate(members):
                parts = [p for p in PurePosixPath(member.filename.replace("\\", "/")).parts
                         if p not in ("/", ".", "..") and "\0" not in p]
                target = folder.joinpath(*parts) if parts else folder / f"member{number}"
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, target.open("wb") as out:
                    while chunk := source.read(UNZIP_CHUNK):
                        written += len(chunk)
                        if max_bytes is not None and written > max_bytes:
                            raise MosmosError(f"{path.name}: unpacks to more than {max_bytes / 1e6:g} MB "
                                              f"({UNZIP_FACTOR} x the upload limit); refused")
                        out.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError) as e:
        raise MosmosError(f"{path.name}: not a readable zip archive ({e})") from None


def read_upload(path: Path, work_dir: Path | None = None, max_unpacked_bytes: int | None = None):
    """A volume file or a zipped DICOM series -> core Volume (the reader `mosmos segment` uses, so the
    browser and the command line see the same grid). A zip is unpacked in ``work_dir`` (default: the system's
    temporary folder), at most ``max_unpacked_bytes`` of it, and removed after reading. Raises MosmosError naming
    the file."""
    if path.name.lower().endswith(".zip"):
        with tempfile.TemporaryDirectory(prefix="mosmos-dicom-", dir=work_dir) as tmp:
            unpack_zip(path, Path(tmp), max_unpacked_bytes)
            folders = sorted({p.parent for p in Path(tmp).rglob("*") if p.is_file()})
            if not folders:
                raise MosmosError(f"{path.name}: the zip archive is empty")
            # The folder with the most files holds the series (archives often wrap it in a folder).
            folder = max(folders, key=lambda f: sum(1 for p in f.iterdir() if p.is_file()))
            vol = coreio.read_volume(folder)
    elif path.name.lower().endswith(VOLUME_SUFFIXES):
        vol = coreio.read_volume(path)
    else:
        raise MosmosError(f"{path.name}: not a volume (expected .nii, .nii.gz, .nrrd or a zipped DICOM series)")
    if min(vol.array.shape) < MIN_SLICES:
        raise MosmosError(f"{path.name}: a 2D image of shape {tuple(vol.array.shape)}; MOSMOS segments 3D volumes")
    return vol


class Session:
    """The state of one page: its scene (from trame-slicer's SlicerApp), volume, running job and results."""

    def __init__(self, slicer_app, models_folder: str | Path | None = None, work_dir: str | Path | None = None,
                 max_unpacked_bytes: int | None = None):
        """``work_dir``: where uploads are unpacked (the session's upload folder); ``max_unpacked_bytes``: the most
        a zipped upload may unpack to."""
        self.app = slicer_app
        self.scene = slicer_app.scene
        self.models_folder = Path(models_folder) if models_folder else models_lib.default_models_dir()
        self.work_dir = Path(work_dir) if work_dir else None
        self.max_unpacked_bytes = max_unpacked_bytes
        self.volume_node = None
        self.dicom_source: DicomSource | None = None      # the series' headers, for a DICOM SEG of the results
        self.model_file: Path | None = None               # the model of the results on show
        self.job: pipeline.SegmentationJob | None = None
        self.outputs: pipeline.SegmentationOutputs | None = None

    # --- models -------------------------------------------------------------------------------------
    def models(self) -> list[models_lib.ModelInfo]:
        return models_lib.list_models(self.models_folder)

    def model_path(self, name: str) -> Path:
        """The model the server offers under ``name`` (its file name in the models folder). Anything else, a path
        included, is refused without being opened, so the page cannot probe the server's files."""
        for info in self.models():
            if info.name == name:
                return info.path
        raise MosmosError(f"model {str(name)[:80]!r}: not one of the models this server offers; choose one from "
                          "the list")

    # --- volume -------------------------------------------------------------------------------------
    def open_volume(self, path: Path, name: str | None = None):
        """Read ``path`` into a new volume node and show it; on any error the scene is left as it was."""
        if self.job is not None:
            raise MosmosError("a segmentation is running: cancel it before opening another volume")
        vol = read_upload(Path(path), self.work_dir, self.max_unpacked_bytes)
        name = name or volumes._stem(str(path))
        array = np.ascontiguousarray(np.asarray(vol.array).transpose(2, 1, 0))
        self.clear_results()
        if self.volume_node is not None:
            self.scene.RemoveNode(self.volume_node)
        self.volume_node = node = volumes.volume_from_array(self.scene, array, vol.affine, name)
        self.dicom_source = vol.source if isinstance(vol.source, DicomSource) else None
        # In the slice views only, as the Slicer module shows it: a volume-rendered frame of the 3D view took 2 s
        # with Mesa's software renderer (2 cores), on the loop that answers the page.
        self.app.display_manager.show_volume_in_slice_background(node)
        self.app.display_manager.reset_views()
        bounds = [0.0] * 6
        node.GetRASBounds(bounds)
        for view in self.app.view_manager.get_threed_views():
            view.renderer().ResetCamera(bounds)   # framed for the organs' surfaces to come, which it shows alone
        return node

    # --- segmentation -------------------------------------------------------------------------------
    def start(self, tags: list[str], model: str, device: str = "auto", fast: bool = False) -> None:
        """``model``: a name from models(); ``fast``: the quick preview of the Slicer module (`mosmos segment
        --fast`)."""
        if self.volume_node is None:
            raise MosmosError("no volume open: upload one or choose one from the data folder")
        if self.job is not None:
            raise MosmosError("a segmentation is already running")
        if not tags:
            raise MosmosError("no organs: type organ names or tick them")
        model_file = self.model_path(model)
        # The core's own checks of the names and of the model file (tensors and checksum), here so that a typo
        # or a broken file is reported at once rather than after a process has started.
        select_tags(tags, list(models_lib.model_info(model_file).organs), open_set_supported=True)
        verify_model(model_file)
        job = pipeline.SegmentationJob(self.volume_node, tags, model_file, device, attention=True,
                                       models_folder=self.models_folder, fast=fast)
        try:
            job.start()
        except BaseException:
            job.cleanup()
            raise
        self.job = job
        self.model_file = model_file

    def poll(self) -> tuple[list[dict], bool]:
        """The child's events so far, and whether it has exited (then call load_results)."""
        events = self.job.process.poll()
        return events, any(e["event"] == "exit" for e in events)

    def load_results(self):
        """After the child exited: its outputs into the scene (or its error raised), one step per next() (a
        generator, see pipeline.SegmentationJob.finish_steps); returns the outputs. The organs' 3D surfaces
        are the one slow step: it is yielded as a function that touches no node, to be run off the server's
        loop (in a worker thread), and its result is expected back through send()."""
        job = self.job
        try:
            outputs = yield from job.finish_steps()
        finally:
            self.job = None
            job.cleanup()
        self.clear_results()
        self.outputs = outputs
        yield
        seg_node = outputs.segmentation_node
        labels = {o["name"]: int(o["label"]) for o in outputs.organs if segmentation.segment_id(seg_node, o["name"])}
        surfaces = yield functools.partial(segmentation.closed_surfaces, outputs.labelmap,
                                           volumes.ijk_to_ras(self.volume_node), labels)
        segmentation.set_closed_surfaces(seg_node, surfaces)
        yield    # the 3D view draws the surfaces (its slowest frame) before the page says the results are in
        return outputs

    def cancel(self) -> None:
        if self.job is not None and self.job.process.running:   # loading finished results is not cancelled
            job, self.job = self.job, None
            job.cleanup()

    def clear_results(self) -> None:
        self.show_attention(None)
        if self.outputs is not None:
            for node in [self.outputs.segmentation_node, self.outputs.table_node,
                         *self.outputs.attention_nodes.values()]:
                self.scene.RemoveNode(node)
            self.outputs = None

    # --- overlays -----------------------------------------------------------------------------------
    def show_attention(self, tag: str | None, opacity: float = 0.6) -> None:
        node = self.outputs.attention_nodes.get(tag) if (self.outputs and tag) else None
        self.app.display_manager.show_volume_in_slice_foreground(node)
        for view in self.app.view_manager.get_slice_views():
            view.set_foreground_opacity(float(opacity) if node is not None else 0.0)

    def attention_colors(self, samples: int = 9) -> list[str]:
        """The overlay colour map at 0, 1/(samples-1), ..., 1 as CSS colours, for the page's colour bar."""
        node = attention_color_node(self.scene)
        n = node.GetNumberOfColors()
        rgba = [0.0] * 4
        colours = []
        for i in range(samples):
            node.GetColor(round(i * (n - 1) / (samples - 1)), rgba)
            colours.append("#" + "".join(f"{round(c * 255):02x}" for c in rgba[:3]))
        return colours

    # --- exports ------------------------------------------------------------------------------------
    def _name(self) -> str:
        return self.volume_node.GetName() if self.volume_node is not None else "volume"

    def segmentation_seg_nrrd(self) -> bytes:
        self._need_outputs()
        with tempfile.TemporaryDirectory(prefix="mosmos-web-") as tmp:
            path = Path(tmp) / f"{self._name()}.seg.nrrd"
            segmentation.write_segmentation(self.outputs.segmentation_node, str(path))
            return path.read_bytes()

    def segmentation_nifti(self) -> bytes:
        self._need_outputs()
        return _nifti_bytes(self.outputs.labelmap, volumes.ijk_to_ras(self.volume_node))

    def segmentation_dicom_seg(self) -> bytes:
        """The results as a DICOM SEG referencing the input series (the writer of `mosmos segment`)."""
        self._need_outputs()
        if self.dicom_source is None:
            raise MosmosError(f"{self._name()}: DICOM SEG needs a DICOM series as input; download .seg.nrrd or NIfTI")
        dataset = segmentation_dataset(self.dicom_source, self.outputs.labelmap.transpose(2, 1, 0),
                                       self.outputs.organs, self.model_file)
        buf = io.BytesIO()
        dataset.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    def attention_zip(self) -> bytes:
        """One NIfTI per organ's attention map, zipped."""
        self._need_outputs()
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
            for tag, node in self.outputs.attention_nodes.items():
                array, ijk_to_ras_matrix = volumes.array_from_volume(node)
                archive.writestr(f"{tag.replace(' ', '_')}_attention.nii.gz", _nifti_bytes(array, ijk_to_ras_matrix))
        return buf.getvalue()

    def _need_outputs(self) -> None:
        if self.outputs is None:
            raise MosmosError("nothing to download yet: segment a volume first")


def _nifti_bytes(array_kji: np.ndarray, ijk_to_ras_matrix: np.ndarray) -> bytes:
    with tempfile.TemporaryDirectory(prefix="mosmos-web-") as tmp:
        path = Path(tmp) / "out.nii.gz"
        coreio.write_volume(path, np.ascontiguousarray(array_kji.transpose(2, 1, 0)), ijk_to_ras_matrix)
        return path.read_bytes()
