"""Sharing models: fp16 files segment as the fp32 ones do, the text tower is read only for open-set organs,
the model card, `mosmos info`, and `mosmos models list/add/pull/remove/index` against a real HTTP server on
127.0.0.1 that serves Range requests (resume), can cut a transfer half-way or alter bytes."""

from __future__ import annotations

import errno
import http.server
import json
import socket
import threading
import time

import numpy as np
import pytest
import torch

from mosmos.files import model_store as store
from mosmos.cli import main
from mosmos.errors import MosmosError
from mosmos.files.modelcard import file_sha256
from mosmos.files.modelfile import SEGMENTATION_KIND, save_model
from test_modelfile import write_v1_model

LABELS = {"0": "background", "1": "spleen", "6": "liver"}


# ---- a tiny real MOSMOS-UNETR, written as fp16 (format 2) and fp32 (format 1) ----

@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    from mosmos.data.transforms import preprocessing_config
    from mosmos.models.segmentation import build_network
    from mosmos.models.segmentation import SegmentationModel, TagEmbedder

    torch.manual_seed(0)
    net = build_network({"arch": "unetr", "num_classes": 3, "backbone": "tiny-vit", "in_channels": 1,
                         "feature_size": 8, "img_size": [32, 32, 32]})
    embedder = TagEmbedder("tiny-vit")
    net.set_tag_embeddings(embedder(["spleen", "liver"]))
    tensors, header = SegmentationModel(net, embedder, [32] * 3).to_file_state()
    header.update(labels=LABELS, modality="CT", preprocessing=preprocessing_config(
        spatial_dims=3, modality="CT", roi_size=[32] * 3, spacing=[4.5] * 3, label_values=[0, 1, 6]))
    folder = tmp_path_factory.mktemp("tiny")
    save_model(folder / "fp16.safetensors", tensors, header)
    write_v1_model(folder / "fp32.safetensors", tensors, header)
    return folder / "fp16.safetensors", folder / "fp32.safetensors"


@pytest.fixture
def tensors_read(monkeypatch):
    """Names of the tensors read from model files (safetensors' lazy reader), in order."""
    import safetensors

    names, real = [], safetensors.safe_open

    class Counting:
        def __init__(self, *args, **kwargs):
            self._f = real(*args, **kwargs)

        def __enter__(self):
            self._f.__enter__()
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

        def keys(self):
            return self._f.keys()

        def get_tensor(self, name):
            names.append(name)
            return self._f.get_tensor(name)

    monkeypatch.setattr(safetensors, "safe_open", Counting)
    return names


def test_fp16_file_segments_as_the_fp32_file_and_reads_no_text_tower(tiny_files, tensors_read):
    from mosmos.data.phantoms import make_phantom
    from mosmos.inference import Segmenter

    fp16, fp32 = tiny_files
    assert fp16.stat().st_size < 0.52 * fp32.stat().st_size
    phantom = make_phantom(5, shape=(32, 32, 32), spacing=(4.5, 4.5, 4.5), organs=["spleen", "liver"])  # one window
    half = Segmenter(fp16, device="cpu")
    a = half.segment(phantom.image, phantom.affine, precision="fp32")  # the weights compared, not bf16
    assert tensors_read and all(n.startswith("network.") for n in tensors_read)  # known organs: no text tower
    b = Segmenter(fp32, device="cpu").segment(phantom.image, phantom.affine, precision="fp32")
    assert len(np.unique(b.labelmap)) == 3  # every class present: the comparison is not between blank maps
    assert (a.labelmap == b.labelmap).mean() >= 0.999
    for organ in ("spleen", "liver"):
        assert np.abs(np.asarray(a.attention[organ]) - np.asarray(b.attention[organ])).max() <= 1e-2

    n_network = len(tensors_read)
    c = half.segment(phantom.image, phantom.affine, tags=["liver", "duodenum"])  # open set: now the text tower
    assert any(n.startswith("text.") for n in tensors_read[n_network:])
    assert "duodenum" in c.attention


# ---- the card and `mosmos info` ----

def _model(path, values=1 << 19, card=None, labels=None, seed=0):
    """A small segmentation model file (``values`` fp16 weights, 2 bytes each)."""
    g = torch.Generator().manual_seed(seed)
    save_model(path, {"network.w": torch.randn(values, generator=g)}, {
        "kind": SEGMENTATION_KIND, "config": {"arch": "test"}, "labels": labels or LABELS, "modality": "CT",
        "preprocessing": {"roi_size": [32, 32, 32], "spacing": [1.5, 1.5, 2.0]},
        "card": card or {"backbone": "ViT-B-16", "description": "abdomen, 13 organs",
                         "validation": {"mean_dice": 0.812, "dice": {"spleen": 0.9, "liver": 0.724}},
                         "data": {"folder": "btcv", "cases": 24, "label_ratio": 0.5},
                         "training": {"epochs": 10, "steps": 200}, "mosmos_version": "0.1.0",
                         "date": "2026-12-01T00:00:00+00:00", "init": {"kind": "mosmos", "file": "pre.safetensors",
                                                                       "sha256": "ab" * 32}}})
    return path


def test_info_prints_the_card_from_the_header_alone(tmp_path, capsys, tensors_read):
    path = _model(tmp_path / "abdomen.safetensors")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    for text in ("1 = spleen (Dice 0.900)", "6 = liver (Dice 0.724)", "mean Dice 0.812", "modality: CT",
                 "btcv (24 cases, label budget 0.5)", "10 epochs, 200 steps", "abdomen, 13 organs",
                 "SHA-256 " + "ab" * 32, "mosmos 0.1.0"):
        assert text in out
    assert main(["info", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["header"]["card"]["validation"]["mean_dice"] == 0.812
    assert tensors_read == []  # the header only
    assert main(["info", str(tmp_path / "none.safetensors")]) == 1
    assert "model file not found" in capsys.readouterr().err


def test_list_add_remove_on_real_files(tmp_path, capsys):
    folder, source = tmp_path / "models", _model(tmp_path / "abdomen.safetensors")
    assert main(["models", "--folder", str(folder), "add", str(source)]) == 0
    assert main(["models", "list", "--folder", str(folder), "--json"]) == 0
    out = capsys.readouterr().out
    listed = json.loads(out[out.index("["):])
    assert [(m["name"], m["kind"], m["organs"], m["mean_dice"]) for m in listed] == [
        ("abdomen.safetensors", "segmentation", ["spleen", "liver"], 0.812)]
    assert listed[0]["size"] == source.stat().st_size

    other = _model(tmp_path / "other" / "abdomen.safetensors", seed=1)
    assert main(["models", "add", str(other), "--folder", str(folder)]) == 1
    assert "already installed (--force replaces it)" in capsys.readouterr().err
    assert (folder / "abdomen.safetensors").read_bytes() == source.read_bytes()
    assert main(["models", "add", str(other), "--folder", str(folder), "--force"]) == 0
    assert (folder / "abdomen.safetensors").read_bytes() == other.read_bytes()

    assert main(["models", "remove", "abdomen.safetensors", "--folder", str(folder)]) == 0
    assert main(["models", "remove", "abdomen.safetensors", "--folder", str(folder)]) == 1
    assert "no such model" in capsys.readouterr().err
    assert _visible(folder) == []


def _visible(folder):
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


# ---- pulls from a real HTTP server ----

class Server:
    """http.server in a thread: serves ``files`` with Range support and records each request's
    (path, range start, bytes sent). ``cut_after`` bytes: the next transfer stops there (Content-Length
    promised whole); ``tamper``: bytes served altered; ``status``: answer every request with it."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, int, int]] = []
        self.cut_after: int | None = None
        self.stall_after: int | None = None  # the next transfer waits there until ``release`` is set
        self.release = threading.Event()
        self.tamper = False
        self.status: int | None = None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if server.status:
                    self.send_error(server.status)
                    return
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                if server.tamper:
                    data = data[:-100] + bytes(b ^ 0xFF for b in data[-100:])
                start = 0
                ranged = self.headers.get("Range", "")
                if ranged.startswith("bytes="):
                    start = int(ranged[6:].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("ETag", '"v1"')
                self.end_headers()
                body = data[start:]
                if server.cut_after is not None:
                    body, server.cut_after = body[:server.cut_after], None
                    self.close_connection = True
                if server.stall_after is not None:
                    head, body, server.stall_after = body[:server.stall_after], body[server.stall_after:], None
                    self.wfile.write(head)
                    self.wfile.flush()
                    server.release.wait(60)
                    try:
                        self.wfile.write(body)
                    except OSError:  # the client went away meanwhile
                        pass
                    return
                self.wfile.write(body)
                self.wfile.flush()
                server.requests.append((self.path, start, len(body)))

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _publish(server, tmp_path, name, **kwargs):
    path = _model(tmp_path / "lab" / name, **kwargs)
    server.files[f"/models/{name}"] = path.read_bytes()
    return path


def test_pull_verifies_and_installs(server, tmp_path, capsys):
    source = _publish(server, tmp_path, "abdomen.safetensors")
    folder = tmp_path / "models"
    url = f"{server.url}/models/abdomen.safetensors"
    assert main(["models", "pull", url, "--sha256", file_sha256(source), "--folder", str(folder)]) == 0
    assert (folder / "abdomen.safetensors").read_bytes() == source.read_bytes()
    assert main(["models", "pull", url, "--folder", str(folder)]) == 1  # same name: refused before downloading
    assert "already installed" in capsys.readouterr().err and len(server.requests) == 1
    assert main(["models", "pull", url, "--folder", str(folder), "--name", "copy.safetensors",
                 "--json-progress"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-2]["event"] == "progress" and events[-2]["done"] == events[-2]["total"] == len(source.read_bytes())
    assert events[-1]["event"] == "done"
    assert _visible(folder) == ["abdomen.safetensors", "copy.safetensors"]
    assert not (folder / store.DOWNLOADS).exists()  # nothing left to resume: no hidden folder either


def test_interrupted_pull_resumes_without_downloading_the_first_half_again(server, tmp_path, capsys):
    source = _publish(server, tmp_path, "abdomen.safetensors")
    size = source.stat().st_size
    folder = tmp_path / "models"
    url = f"{server.url}/models/abdomen.safetensors"
    server.cut_after = int(size * 0.6)
    assert main(["models", "pull", url, "--folder", str(folder)]) == 1
    err = capsys.readouterr().err
    assert "download interrupted" in err and "pull again to resume" in err and err.count("\n") == 1
    assert _visible(folder) == []  # nothing in the folder, a partial file in the hidden one
    (partial,) = (folder / store.DOWNLOADS).glob("*.part")
    kept = partial.stat().st_size
    assert size / 2 <= kept < size

    assert main(["models", "pull", url, "--folder", str(folder)]) == 0
    (first, second) = server.requests
    assert first[1] == 0 and second[1] == kept  # resumed where it stopped
    assert second[1] >= size / 2 and second[1] + second[2] == size  # ... and only the rest was served
    assert (folder / "abdomen.safetensors").read_bytes() == source.read_bytes()


def test_altered_bytes_and_a_wrong_sha256_are_refused(server, tmp_path, capsys):
    source = _publish(server, tmp_path, "abdomen.safetensors")
    folder = tmp_path / "models"
    _model(folder / "abdomen.safetensors", seed=7)  # the installed model of the same name
    before = (folder / "abdomen.safetensors").read_bytes()
    url = f"{server.url}/models/abdomen.safetensors"
    server.tamper = True
    assert main(["models", "pull", url, "--folder", str(folder), "--force"]) == 1
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and url in err and err.count("\n") == 1
    server.tamper = False
    assert main(["models", "pull", url, "--folder", str(folder), "--force", "--sha256", "0" * 64]) == 1
    assert "checksum mismatch" in capsys.readouterr().err
    assert main(["models", "pull", url, "--folder", str(folder), "--sha256", "xyz"]) == 1
    assert "'xyz': not 64 hexadecimal digits" in capsys.readouterr().err
    assert (folder / "abdomen.safetensors").read_bytes() == before  # previous model intact
    assert not (folder / store.DOWNLOADS).exists()  # a bad download is not kept for resuming
    assert source.exists()


def test_index_with_two_models(server, tmp_path, capsys):
    a = _publish(server, tmp_path, "abdomen.safetensors")
    b = _publish(server, tmp_path, "spleen.safetensors", labels={"0": "background", "1": "spleen"}, seed=2)
    index = tmp_path / "lab" / "index.json"
    assert main(["models", "index", str(a), str(b), "--out", str(index)]) == 0
    server.files["/models/index.json"] = index.read_bytes()
    entries = json.loads(index.read_text())["models"]
    assert [(e["name"], e["url"], e["sha256"], e["organs"]) for e in entries] == [
        ("abdomen.safetensors", "abdomen.safetensors", file_sha256(a), ["spleen", "liver"]),
        ("spleen.safetensors", "spleen.safetensors", file_sha256(b), ["spleen"])]
    folder = tmp_path / "models"
    for name in ("spleen.safetensors", "abdomen.safetensors"):
        assert main(["models", "pull", "--index", f"{server.url}/models/index.json", name,
                     "--folder", str(folder)]) == 0
    assert [m.name for m in store.list_models(folder)] == ["abdomen.safetensors", "spleen.safetensors"]
    assert main(["models", "pull", "--index", str(index), "kidney", "--folder", str(folder)]) == 1
    assert "it lists: abdomen.safetensors, spleen.safetensors" in capsys.readouterr().err
    server.files["/models/index.json"] = json.dumps({"format": "mosmos-model-index", "models": [
        {"name": "abdomen.safetensors", "url": "abdomen.safetensors", "sha256": "1" * 64}]}).encode()
    assert main(["models", "pull", "--index", f"{server.url}/models/index.json", "abdomen.safetensors",
                 "--folder", str(tmp_path / "elsewhere")]) == 1
    assert "checksum mismatch" in capsys.readouterr().err
    assert _visible(tmp_path / "elsewhere") == []


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["no answer", "404", "500", "not a model", "format 99", "pretrained"])
def test_bad_downloads_are_one_line_errors_and_leave_the_folder_as_it_was(server, tmp_path, capsys, case):
    from safetensors.torch import save as st_save

    folder = tmp_path / "models"
    installed = _model(folder / "abdomen.safetensors", seed=3)
    before = installed.read_bytes()
    url = f"{server.url}/models/abdomen.safetensors"
    expected = {"no answer": "cannot connect", "404": "HTTP 404", "500": "HTTP 500",
                "not a model": "not a MOSMOS model file", "format 99": "unsupported model file format version 99",
                "pretrained": "cannot segment"}[case]
    if case == "no answer":
        url = f"http://127.0.0.1:{_free_port()}/abdomen.safetensors"
    elif case == "500":
        server.status = 500
    elif case == "not a model":
        server.files["/models/abdomen.safetensors"] = b"<html>not found</html>" * 100
    elif case == "format 99":
        server.files["/models/abdomen.safetensors"] = st_save(
            {"w": torch.zeros(2)}, metadata={"mosmos": json.dumps({"format_version": 99})})
    elif case == "pretrained":
        save_model(tmp_path / "pre.safetensors", {"w": torch.zeros(2)}, {"kind": "mosmos-pretrain"})
        server.files["/models/abdomen.safetensors"] = (tmp_path / "pre.safetensors").read_bytes()
    assert main(["models", "pull", url, "--folder", str(folder), "--force"]) == 1
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and err.startswith("mosmos models: error: ")
    assert _visible(folder) == ["abdomen.safetensors"] and installed.read_bytes() == before
    assert not (folder / store.DOWNLOADS).exists()


def test_unwritable_folder_and_full_disk(server, tmp_path, capsys, monkeypatch):
    _publish(server, tmp_path, "abdomen.safetensors")
    url = f"{server.url}/models/abdomen.safetensors"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["models", "pull", url, "--folder", str(blocker / "models")]) == 1
    assert "cannot write to the models folder" in capsys.readouterr().err
    assert main(["models", "add", str(tmp_path / "lab" / "abdomen.safetensors"), "--folder",
                 str(blocker / "models")]) == 1
    assert "cannot write to the models folder" in capsys.readouterr().err

    folder = tmp_path / "models"
    installed = _model(folder / "abdomen.safetensors", seed=4)
    before = installed.read_bytes()
    real_open = open

    class FullDisk:  # a file system with room for 100 kB
        def __init__(self, f):
            self.f, self.room = f, 100_000

        def write(self, data):
            if len(data) > self.room:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.room -= len(data)
            return self.f.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(store, "open", lambda *a, **k: FullDisk(real_open(*a, **k)), raising=False)
    assert main(["models", "pull", url, "--folder", str(folder), "--force"]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and err.count("\n") == 1
    assert installed.read_bytes() == before and _visible(folder) == ["abdomen.safetensors"]
    monkeypatch.undo()
    assert main(["models", "pull", url, "--folder", str(folder), "--force"]) == 0  # room again: resumes
    assert server.requests[-1][1] > 0
    assert installed.read_bytes() == (tmp_path / "lab" / "abdomen.safetensors").read_bytes()


def test_remove_refuses_paths(tmp_path):
    with pytest.raises(MosmosError, match="not a model name"):
        store.remove_model("../abdomen.safetensors", tmp_path)


def test_slicer_download_runs_the_same_pull_in_a_background_process_cancel_then_resume(server, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MOSMOSSegment"))
    from mosmos.mrml import models

    def until_exit(download):
        events = []
        while not events or events[-1]["event"] != "exit":  # as the widget's timer polls
            events += download.poll()
            time.sleep(0.05)
        return events

    source = _publish(server, tmp_path, "abdomen.safetensors")
    size = source.stat().st_size
    folder = tmp_path / "models"
    url = f"{server.url}/models/abdomen.safetensors"
    server.stall_after = size // 2
    download = models.ModelDownload(url, folder).start()
    deadline = time.monotonic() + 120
    while not any(p.stat().st_size >= size // 2 - store.CHUNK for p in (folder / store.DOWNLOADS).glob("*.part")):
        assert time.monotonic() < deadline and download.process.running
        time.sleep(0.05)
    download.cancel()  # the Cancel button
    until_exit(download)
    server.release.set()
    assert download.result() is None and _visible(folder) == []
    (partial,) = (folder / store.DOWNLOADS).glob("*.part")
    kept = partial.stat().st_size

    download = models.ModelDownload(url, folder).start()  # downloading it again resumes
    events = until_exit(download)
    info = download.result()
    assert server.requests[-1][1] == kept > 0
    assert info.path == folder / "abdomen.safetensors" and info.path.read_bytes() == source.read_bytes()
    assert any(e["event"] == "progress" and e["done"] == e["total"] == source.stat().st_size for e in events)
    tip = models.tooltip(info)
    assert "mean Dice 0.812" in tip and "1 = spleen (Dice 0.900)" in tip and "btcv (24 cases" in tip

    again = models.ModelDownload(url, folder).start()
    with pytest.raises(MosmosError, match="already installed"):
        again.process.wait()
