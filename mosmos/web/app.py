"""The page of one session: a control panel (volume, model, organs, Segment/Cancel, organ volume table with each
organ's QC status and an attention switch per organ, opacity, colour bar, downloads) beside Slicer's axial, coronal, sagittal and 3D
views. Widgets only call Session (session.py); every error becomes the page's one-line message."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from trame.app import TrameApp
from trame.ui.vuetify3 import VAppLayout
from trame.widgets import client, html
from trame.widgets import vuetify3 as v
from trame_slicer import module as trame_slicer_module
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories

from mosmos.errors import MosmosError
from mosmos.mrml.process import Cancelled
from mosmos.mrml.tables import STATUS_COLORS

from .auth import SESSION_SECRET_ENV, SESSION_SECRET_HEADER, same_secret
from .session import UNZIP_FACTOR, Session, data_files

LOG = logging.getLogger("mosmos.web")
LAYOUT = "Quad View"   # axial, coronal, sagittal and 3D
# Run in the page by the browser tests and benchmarks/bench_web.py: click Segment, then ping the server through
# the page every 20 ms until the run's results are shown; each ping's round trip (ms) and the page's #info then.
TIMED_PINGS_SCRIPT = """async () => {
    const pings = [];
    const info = () => document.querySelector('#info').innerText;
    document.querySelector('#segment').click();
    const start = performance.now();
    let started = false;   // the page says "Done." of an earlier run until the server has answered the click
    while (performance.now() - start < 600000) {
        started = started || !info().startsWith('Done.');
        if (started && info().startsWith('Done.')) break;
        const t = performance.now();
        await trame.trigger('mosmos_ping');
        pings.push({ms: performance.now() - t, info: info()});
        await new Promise((resolve) => setTimeout(resolve, 20));
    }
    return pings;
}"""
LOADING = "Loading the results"
LOAD_PAUSE_S = 0.01    # between the steps of loading results: long enough for the loop to answer waiting messages
STILL_QUALITY = 90
SOFTWARE_RENDERER = re.compile(r"renderer string:\s*(llvmpipe|softpipe|swrast)")
UPLOAD_CHUNK = 1 << 20  # bytes per websocket message: small enough for wslink's 4 MiB limit once base64-encoded

# The browser sends a chosen file in chunks, each answered before the next, so the server can refuse it at once
# (too large, a name or size it does not take) and the page can show how much has arrived. A refusal, or any
# failure on the way, is the page's message and leaves the page ready for the next file. Formatted with the
# names of the two triggers (upload_begin, upload_chunk).
UPLOAD_SCRIPT = """
window.mosmosUpload = async function (file) {
  try {
    if (!file || !(await trame.trigger('%%(begin)s', [file.name, file.size]))) return;
    for (let offset = 0; offset < file.size; offset += %(size)d) {
      const data = await new Promise((resolve, reject) => {
        const reader = new FileReader();
        reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(',') + 1));
        reader.onerror = () => reject(reader.error);
        reader.readAsDataURL(file.slice(offset, offset + %(size)d));
      });
      if (!(await trame.trigger('%%(chunk)s', [offset, data]))) return;
    }
  } catch (e) {
    trame.state.set('uploading', false);
    trame.state.set('message', 'the upload failed: ' + ((e && e.message) || String(e)));
  }
};
""" % {"size": UPLOAD_CHUNK}


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in rgb)


def split_organs(text: str, ticked: list[str]) -> list[str]:
    """Typed names ("liver, spleen") then ticked ones, each once, in that order."""
    names = [t.strip() for t in (text or "").replace(";", ",").split(",") if t.strip()]
    return list(dict.fromkeys(names + list(ticked or [])))


def upload_name(name) -> str:
    """The page's file name if it is a plain one (no folder, no '..', no NUL), else MosmosError: the upload is
    written under this name in the session's folder."""
    text = name if isinstance(name, str) else ""
    if not text.strip() or text in (".", "..") or any(c in text for c in "/\\\0") or len(text) > 255:
        raise MosmosError(f"{str(name)[:80]!r}: not a plain file name; rename the file and upload it again")
    return text


def upload_size(size, name: str) -> int:
    """The announced size if it is a non-negative whole number of bytes, else MosmosError."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise MosmosError(f"{name}: the browser announced a size of {str(size)[:40]!r} bytes, not a whole number "
                          "of bytes; upload it again")
    return size


def session_secret_check(secret: str):
    """aiohttp middleware for the session's own server: a request without the launcher's secret gets a bare 404,
    so that the session's port tells a direct caller nothing (not even that a page is there)."""
    from aiohttp import web

    @web.middleware
    async def check(request, handler):
        if not same_secret(request.headers.get(SESSION_SECRET_HEADER), secret):
            return web.Response(status=404, text="not found")
        return await handler(request)

    return check


class MosmosWebApp(TrameApp):
    def __init__(self, server=None, models: str | None = None, data: str | None = None,
                 uploads: str | Path | None = None, max_upload_mb: float = 2048):
        """``uploads``: this session's folder for uploaded files (the launcher removes it when the session ends);
        ``max_upload_mb``: the largest upload accepted."""
        super().__init__(server)
        self.server.enable_module(trame_slicer_module)
        self.slicer = SlicerApp()
        # A view that changed is drawn once, sent at the still quality (90, trame-rca's) at once, rather than
        # drawn at a lower quality and drawn again for the still image half a second later: drawing is what
        # costs on a server without a GPU, on the loop that answers the page.
        register_rca_factories(self.slicer.view_manager, self.server, interactive_quality=STILL_QUALITY)
        self.layout_manager = LayoutManager(self.slicer.scene, self.slicer.view_manager, self.server)
        self.layout_manager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.layout_manager.set_layout(LAYOUT)
        views = self.slicer.view_manager.get_views()
        if views and SOFTWARE_RENDERER.search(views[0].render_window().ReportCapabilities()):
            # Mesa's renderer draws on the CPU, on the loop that answers the page: with 8x multisampling (trame-
            # slicer's default) a 3D frame of the organs' surfaces took 0.5 s on 2 cores, without it 0.2 s.
            for view in views:
                view.render_window().SetMultiSamples(0)
        self.uploads = Path(uploads) if uploads else Path(tempfile.mkdtemp(prefix="mosmos-web-uploads-"))
        self.max_upload_bytes = int(max_upload_mb * 1e6)
        self.session = Session(self.slicer, models, self.uploads, UNZIP_FACTOR * self.max_upload_bytes)
        self.data_folder = Path(data) if data else None
        self._upload: dict | None = None     # the upload under way: path, size, received
        self._watcher: asyncio.Task | None = None
        self._init_state()
        self._build_ui()

    # --- state --------------------------------------------------------------------------------------
    def _init_state(self) -> None:
        s = self.state
        s.trame__title = "MOSMOS"
        s.message = ""
        s.info = "Open a volume, choose a model, name the organs, Segment."
        s.volume_name = ""
        s.data_choices = [p.name for p in data_files(self.data_folder)]
        s.data_choice = ""
        s.model_items = []
        s.model = ""
        s.model_organs = []
        s.organ_text = ""
        s.ticked = []
        s.quick_preview = False
        s.running = False
        s.loading = False
        s.progress = 0
        s.uploading = False
        s.upload_progress = 0
        s.is_dicom = False
        s.rows = []
        s.overlay_tag = None
        s.overlay_opacity = 0.6
        s.colorbar = "linear-gradient(to right, " + ", ".join(self.session.attention_colors()) + ")"
        s.has_results = False
        self._refresh_models()
        s.change("data_choice")(self._on_data_choice)
        s.change("model")(self._on_model)
        s.change("overlay_tag", "overlay_opacity")(self._on_overlay)

    def _refresh_models(self) -> None:
        try:
            found = self.session.models()
        except MosmosError as e:
            found, self.state.message = [], str(e)
        self.state.model_items = [{"title": m.display_name, "value": m.name} for m in found]
        if found and self.state.model not in [m.name for m in found]:
            self.state.model = found[0].name
            self._on_model(found[0].name)
        if not found:
            self.state.message = f"{self.session.models_folder}: no segmentation model installed"

    def _fail(self, e: BaseException) -> None:
        """Show ``e`` as the page's message; unexpected errors also go to the server log, with a traceback."""
        if isinstance(e, MosmosError):
            self.state.message = str(e)
        else:
            LOG.error("%s", "".join(traceback.format_exception(e)))
            self.state.message = f"{type(e).__name__}: {e}".splitlines()[0]
        self.state.flush()

    # --- volume -------------------------------------------------------------------------------------
    def _open(self, path: Path, name: str) -> bool:
        """Show the volume at ``path``; False (and the page's message) when it cannot be opened."""
        self.state.message = ""
        try:
            node = self.session.open_volume(path, name)
        except Exception as e:  # noqa: BLE001 - any reader failure must stay a message on the page
            self._fail(e)
            return False
        self.state.volume_name = node.GetName()
        self.state.is_dicom = self.session.dicom_source is not None
        self._show_results()
        self.state.info = f"{node.GetName()}: {'x'.join(map(str, node.GetImageData().GetDimensions()))} voxels"
        return True

    def upload_begin(self, name, size) -> bool:
        """A file of ``size`` bytes is about to arrive: refuse it (False, with the page's message) when the name
        is not a plain file name, the size not a byte count, or above the limit; otherwise drop the previous
        upload and expect this one's chunks. Never raises: the page's next upload must work."""
        self._discard_upload()
        try:
            name = upload_name(name)
            size = upload_size(size, name)
        except MosmosError as e:
            self._fail(e)
            return False
        if size == 0:
            self.state.message = f"{name}: an empty file"
            return False
        if size > self.max_upload_bytes:
            self.state.message = (f"{name}: {size / 1e6:.1f} MB, more than this server accepts "
                                  f"({self.max_upload_bytes / 1e6:g} MB); choose it from the data folder or ask "
                                  "for a larger --max-upload-mb")
            return False
        self.state.message = ""
        for old in self.uploads.iterdir():   # one upload at a time is kept: the volume on show
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        self._upload = {"path": self.uploads / name, "size": size, "received": 0}
        self._upload["path"].write_bytes(b"")
        self.state.uploading, self.state.upload_progress = True, 0
        return True

    def upload_chunk(self, offset: int, data: str) -> bool:
        """Append one base64 chunk; the last one opens the file. False stops the browser's upload."""
        up = self._upload
        if up is None or offset != up["received"]:
            return False
        try:
            chunk = base64.b64decode(data, validate=True)
        except (binascii.Error, TypeError, ValueError):
            self._discard_upload()
            self.state.message = f"{up['path'].name}: a part of the upload arrived damaged; upload it again"
            return False
        if up["received"] + len(chunk) > min(up["size"], self.max_upload_bytes):
            self._discard_upload()
            self.state.message = f"{up['path'].name}: more data than announced; upload refused"
            return False
        with up["path"].open("ab") as f:
            f.write(chunk)
        up["received"] += len(chunk)
        self.state.upload_progress = round(100 * up["received"] / max(up["size"], 1))
        if up["received"] == up["size"]:
            self._upload = None
            self.state.uploading = False
            if not self._open(up["path"], None):
                up["path"].unlink()    # the session's folder keeps only the volume on show
        return True

    def _discard_upload(self) -> None:
        if self._upload is not None:
            self._upload["path"].unlink(missing_ok=True)
            self._upload = None
        self.state.uploading = False

    def _on_data_choice(self, data_choice, **_) -> None:
        # Only the files the page was offered: the page's state is the browser's to change.
        if data_choice and self.data_folder is not None and data_choice in self.state.data_choices:
            self._open(self.data_folder / data_choice, None)

    def _on_model(self, model, **_) -> None:
        organs = []
        for info in self.session.models():
            if info.name == model:
                organs = list(info.organs)
        self.state.model_organs = organs
        self.state.ticked = [t for t in self.state.ticked if t in organs]

    # --- segmentation -------------------------------------------------------------------------------
    def segment(self, organ_text: str, ticked: list[str], model: str, quick_preview: bool) -> None:
        """The page's fields come with the click: the browser may send a field's last edit after the click
        when it is busy, so the server's copy of them can lag behind what the user saw."""
        self.state.message = ""
        self.state.update({"organ_text": organ_text, "ticked": ticked, "model": model, "quick_preview": quick_preview})
        tags = split_organs(organ_text, ticked)
        try:
            self.session.start(tags, model, fast=bool(quick_preview))   # by its name among the server's models
        except Exception as e:  # noqa: BLE001
            self._fail(e)
            return
        self.state.running, self.state.progress = True, 0
        self.state.info = f"Segmenting {', '.join(tags)}{' (quick preview)' if quick_preview else ''} ..."
        self._watcher = asyncio.get_running_loop().create_task(self._watch())  # a reference keeps it alive

    async def _watch(self) -> None:
        while self.session.job is not None:
            await asyncio.sleep(0.2)
            if self.session.job is None:
                break
            try:
                events, exited = self.session.poll()
            except Cancelled:
                break
            with self.state:
                for e in events:
                    if e["event"] == "progress" and int(e.get("total", 0)) > 0:
                        self.state.progress = round(100 * int(e["done"]) / int(e["total"]))
                    elif e["event"] == "status":  # a long step with no progress to show (a first compile)
                        self.state.info = f"Segmenting: {e.get('message', '')}"
                if exited:
                    self.state.loading, self.state.info = True, f"{LOADING} ..."
            if exited:
                await self._load_results()
                return

    async def _load_results(self) -> None:
        """The finished run's outputs into the scene a step at a time, giving the loop to the page's other
        requests (view rendering, clicks, pings) between steps; a step's work that needs no scene (the 3D
        surfaces) runs in a worker thread meanwhile."""
        steps = self.session.load_results()
        result = None
        try:
            while True:
                work = steps.send(result)
                result = await asyncio.get_running_loop().run_in_executor(None, work) if work else None
                await asyncio.sleep(LOAD_PAUSE_S)
        except StopIteration as done:
            outputs = done.value
        except Exception as e:  # noqa: BLE001
            with self.state:
                self.state.running = self.state.loading = False
                self.state.info = "Segmentation failed."
                self._fail(e)
            return
        with self.state:
            self.state.running = self.state.loading = False
            self.state.progress = 100
            self._show_results()
            notices = "; ".join(outputs.notices)
            self.state.info = "Done." + (f" {notices}" if notices else "")

    def cancel(self) -> None:
        if self.state.loading:   # the run has finished: its results are on their way in
            return
        self.session.cancel()
        self.state.running, self.state.progress = False, 0
        self.state.info = "Cancelled."

    def _show_results(self) -> None:
        out = self.session.outputs
        if out is None:
            self.state.rows, self.state.has_results, self.state.overlay_tag = [], False, None
            return
        table = out.table_node.GetTable()
        # organ -> (mL, QC status, reasons), as the table node holds them (mosmos.mrml.tables.COLUMNS)
        cells = {table.GetValue(r, 0).ToString(): (table.GetValue(r, 2).ToDouble(), table.GetValue(r, 3).ToString(),
                                                   table.GetValue(r, 4).ToString())
                 for r in range(table.GetNumberOfRows())}
        rows = []   # assigned whole: trame sends the state on assignment, not on a list's append
        for o in out.organs:
            ml, status, reasons = cells.get(o["name"], (0.0, "", ""))
            rows.append({"name": o["name"], "label": int(o["label"]), "color": _hex(o["color"]), "ml": f"{ml:.3f}",
                         "status": status, "reasons": reasons, "flag": STATUS_COLORS.get(status, "transparent"),
                         "attention": o["name"] in out.attention_nodes})
        self.state.rows = rows
        self.state.has_results = True
        self.state.overlay_tag = None

    def _on_overlay(self, overlay_tag, overlay_opacity, **_) -> None:
        try:
            self.session.show_attention(overlay_tag, float(overlay_opacity))
        except Exception as e:  # noqa: BLE001
            self._fail(e)

    # --- downloads ----------------------------------------------------------------------------------
    def _attachment(self, make):
        try:
            return self.server.protocol.addAttachment(make())
        except Exception as e:  # noqa: BLE001
            self._fail(e)
            return None

    def download_seg_nrrd(self):
        return self._attachment(self.session.segmentation_seg_nrrd)

    def download_nifti(self):
        return self._attachment(self.session.segmentation_nifti)

    def download_dicom_seg(self):
        return self._attachment(self.session.segmentation_dicom_seg)

    def download_attention(self):
        return self._attachment(self.session.attention_zip)

    def ping(self) -> float:
        """Answered at once: the page (and the benchmark) times it to see whether the server loop is free."""
        return time.time()

    # --- page ---------------------------------------------------------------------------------------
    def _download_button(self, label: str, element_id: str, file_name: str, handler) -> None:
        trigger = self.server.controller.trigger_name(handler)
        v.VBtn(label, id=element_id, size="small", variant="tonal", classes="mr-1 mb-1",
               disabled=("!has_results || running",),
               click=f"utils.download(`${{volume_name}}{file_name}`, trigger('{trigger}'), "
                     "'application/octet-stream')")

    def _build_ui(self) -> None:
        begin, chunk = self.server.trigger_name(self.upload_begin), self.server.trigger_name(self.upload_chunk)
        self.server.trigger("mosmos_ping")(self.ping)
        with VAppLayout(self.server, full_height=True, theme="dark") as layout:
            client.Script(UPLOAD_SCRIPT % {"begin": begin, "chunk": chunk})
            with v.VNavigationDrawer(permanent=True, width=380, classes="pa-3"):
                html.H3("MOSMOS", classes="mb-2")
                v.VAlert(v_if=("message",), text=("message",), type="error", density="compact",
                         id="message", closable=True, classes="mb-2", click_close="message = ''")
                html.Div("{{ info }}", id="info", classes="text-caption mb-2")

                html.Div("Volume (NIfTI, NRRD or zipped DICOM)", classes="text-subtitle-2")
                html.Input(type="file", id="upload", accept=".nii,.gz,.nrrd,.nhdr,.zip,*/*",
                           disabled=("running",),
                           change="window.mosmosUpload($event.target.files[0]); $event.target.value = null;")
                v.VProgressLinear(model_value=("upload_progress",), v_show=("uploading",), id="upload-progress",
                                  height=6, color="secondary", classes="mt-1")
                with html.Select(v_model=("data_choice",), id="data", v_if=("data_choices.length",),
                                 disabled=("running",), classes="mt-1", style="color: inherit; width: 100%"):
                    html.Option("choose from the data folder", value="")
                    html.Option("{{ f }}", v_for="f in data_choices", key="f", value=("f",))
                html.Div("{{ volume_name }}", id="volume-name", classes="text-caption mb-3")

                html.Div("Model", classes="text-subtitle-2")
                with html.Select(v_model=("model",), id="model", disabled=("running",),
                                 style="color: inherit; width: 100%", classes="mb-3"):
                    html.Option("{{ m.title }}", v_for="m in model_items", key="m.value", value=("m.value",))

                html.Div("Organs", classes="text-subtitle-2")
                v.VTextField(v_model=("organ_text",), id="organs", placeholder="liver, spleen",
                             density="compact", hide_details=True, disabled=("running",))
                with html.Div(classes="d-flex flex-wrap mb-2"):
                    with html.Label(v_for="o in model_organs", key="o", classes="mr-3 text-body-2"):
                        html.Input(type="checkbox", value=("o",), v_model=("ticked",), disabled=("running",))
                        html.Span(" {{ o }}")

                with html.Label(classes="text-body-2 d-block mb-2",
                                title="fewer, less overlapping windows over the body only: a first look"):
                    html.Input(type="checkbox", id="quick-preview", v_model=("quick_preview",),
                               disabled=("running",))
                    html.Span(" Quick preview")
                with html.Div(classes="d-flex align-center mb-2"):
                    v.VBtn("Segment", id="segment", color="primary", disabled=("running || !volume_name",),
                           click=(self.segment, "[organ_text, ticked, model, quick_preview]"), classes="mr-2")
                    v.VBtn("Cancel", id="cancel", disabled=("!running || loading",), click=self.cancel)
                v.VProgressLinear(model_value=("progress",), v_show=("running",), id="progress", height=6,
                                  color="primary", classes="mb-2")

                with html.Div(v_if=("has_results",), id="results"):
                    html.Div("Organ volumes", classes="text-subtitle-2")
                    # Five columns in the side panel: narrow cells (Vuetify's px-2 over the table's 16 px padding).
                    with v.VTable(density="compact", id="volumes"):
                        with html.Thead():
                            with html.Tr():
                                for title in ("", "organ", "mL", "QC", "attention"):
                                    html.Th(title, classes="px-2")
                        with html.Tbody():
                            with html.Tr(v_for="r in rows", key="r.name", raw_attrs=[':data-organ="r.name"']):
                                with html.Td(classes="px-2"):
                                    html.Div(style=("{ background: r.color, width: '14px', height: '14px' }",))
                                html.Td("{{ r.name }}", classes="px-2")
                                html.Td("{{ r.ml }}", classes="ml px-2")
                                # The QC status in its flag's colour; hovering shows the reasons.
                                with html.Td(classes="status px-2", raw_attrs=[':title="r.reasons"']):
                                    html.Span("{{ r.status }}", style=("{ background: r.flag, color: 'white', "
                                                                       "borderRadius: '4px', padding: '0 6px' }",))
                                with html.Td(classes="px-2"):
                                    html.Input(type="checkbox", v_if=("r.attention",),
                                               raw_attrs=[':id="`overlay-${r.name}`"'],
                                               checked=("overlay_tag === r.name",),
                                               change="overlay_tag = $event.target.checked ? r.name : null")
                    html.Div("Attention overlay opacity", classes="text-subtitle-2 mt-2")
                    html.Input(type="range", id="opacity", min=0, max=1, step=0.05,
                               v_model_number=("overlay_opacity",), style="width: 100%")
                    html.Div(id="colorbar", style=("{ background: colorbar, height: '12px' }",))
                    with html.Div(classes="d-flex justify-space-between text-caption mb-2"):
                        html.Span("0")
                        html.Span("attention")
                        html.Span("1")
                    self._download_button(".seg.nrrd", "download-seg", ".seg.nrrd", self.download_seg_nrrd)
                    self._download_button("NIfTI", "download-nifti", "_labels.nii.gz", self.download_nifti)
                    with html.Span(v_if=("is_dicom",)):
                        self._download_button("DICOM SEG", "download-dicom-seg", "_seg.dcm", self.download_dicom_seg)
                    self._download_button("Attention maps", "download-attention", "_attention.zip",
                                          self.download_attention)
            with v.VMain():
                with html.Div(style="height: 100vh; width: 100%; position: relative;", id="views"):
                    self.layout_manager.initialize_layout_grid(layout)
        return layout


def main(argv: list[str] | None = None) -> int:
    """One session's server, started by the launcher (with the session's secret in $MOSMOS_SESSION_SECRET):
    --host, --port, --models, --data, --timeout, --folder, --max-upload-mb."""
    import argparse

    parser = argparse.ArgumentParser(prog="mosmos.web.app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--models")
    parser.add_argument("--data")
    parser.add_argument("--timeout", type=int, default=300, help="exit this many seconds after the last tab closed")
    parser.add_argument("--folder", required=True,
                        help="this session's folder (its upload, and its runs' work files); removed on exit")
    parser.add_argument("--max-upload-mb", type=float, default=2048)
    args, _ = parser.parse_known_args(argv)
    # Taken out of the environment so that the segmentation processes this one starts do not inherit it.
    secret = os.environ.pop(SESSION_SECRET_ENV, "")
    if not secret:
        parser.error(f"no session secret in ${SESSION_SECRET_ENV}: sessions are started by `mosmos web`")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    folder = Path(args.folder)
    uploads, work = folder / "uploads", folder / "work"
    for sub in (uploads, work):
        sub.mkdir(parents=True, exist_ok=True)
    # Every temporary file of this process (a run's copy of the volume, an unpacked zip, a download being made)
    # goes under the session's folder, which the launcher removes whatever way the session ends.
    tempfile.tempdir = str(work)
    app = None
    try:
        app = MosmosWebApp(models=args.models, data=args.data, uploads=uploads, max_upload_mb=args.max_upload_mb)
        app.server.controller.on_server_bind.add(
            lambda server: server.app.middlewares.insert(0, session_secret_check(secret)))
        app.server.start(host=args.host, port=args.port, open_browser=False, show_connection_info=False,
                         timeout=args.timeout)
    finally:   # the tab closed, SIGTERM from the launcher, or the launcher died (see launcher.py)
        if app is not None:
            app.session.cancel()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
