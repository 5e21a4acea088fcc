"""DICOMweb in and out against a real Orthanc (orthanc_server.py, authentication on): the real 3-slice CT pulled with
QIDO-RS/WADO-RS, segmented, the DICOM SEG and attention maps sent back with STOW-RS, queried back and read with
highdicom (equal voxel for voxel to the file output); stored once however often a case is redone; and the ways
it goes wrong (server down, wrong credentials, unknown study, a series without the UIDs a SEG needs, STOW
refused, a connection cut mid-download or mid-store), each one line, exit 1, nothing written or stored, not even an
empty folder; credentials in the URL refused, and no secret shown on any channel."""

import csv
import gzip
import logging
import socket
import socketserver
import threading

import numpy as np
import pydicom
import pytest

from helpers import real_data
from inference_stub import write_stub_model
from mosmos.cli import main
from mosmos.errors import MosmosError
from mosmos.files.redact import has_user_info, shown_url
from mosmos.inference import dicomweb
from mosmos.inference.io import read_volume
from orthanc_server import free_port, start_orthanc, stop

REFUSED_STUDY = "1.2.826.0.1.3680043.8.498.2700001"     # the Lua filter refuses SEG sent into this study
NO_FRAME_STUDY = "1.2.826.0.1.3680043.8.498.2700002"    # a copy without Frame of Reference UID
DROPPED_STUDY = "1.2.826.0.1.3680043.8.498.2700003"     # a SEG sent here is answered with success, then dropped


def _copy(ct3, folder, study, drop=()):
    """The 3-slice CT as a new study (new series and instance UIDs), without the attributes ``drop``."""
    folder.mkdir()
    series = pydicom.uid.generate_uid(entropy_srcs=[study, "series"])
    for n, f in enumerate(sorted(ct3.iterdir())):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[study, str(n)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for keyword in drop:
            delattr(ds, keyword)
        ds.save_as(folder / f"{n}.dcm", enforce_file_format=True)
    return sorted(folder.iterdir())


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """One Orthanc for the module, holding the real CT, a copy in the refusing study and a copy without UIDs."""
    root = tmp_path_factory.mktemp("orthanc")
    ct3 = real_data("dcmqi_ct3slice/ct-3slice")
    server, proc = start_orthanc(root, refused_study=REFUSED_STUDY, dropped_study=DROPPED_STUDY)
    try:
        server.upload(sorted(ct3.iterdir()))
        server.upload(_copy(ct3, root / "refused", REFUSED_STUDY))
        server.upload(_copy(ct3, root / "noframe", NO_FRAME_STUDY, drop=("FrameOfReferenceUID",)))
        server.upload(_copy(ct3, root / "dropped", DROPPED_STUDY))
        study = str(pydicom.dcmread(next(ct3.iterdir()), stop_before_pixels=True).StudyInstanceUID)
        model = write_stub_model(root / "stub.mosmos", roi=(16, 16, 16), spacing=(4, 4, 4), epsilon=0.5)
        yield server, study, model, ct3
    finally:
        stop(proc)


@pytest.fixture
def signed_in(pacs, monkeypatch):
    server = pacs[0]
    monkeypatch.setenv(dicomweb.USER_ENV, server.user)
    monkeypatch.setenv(dicomweb.PASSWORD_ENV, server.password)
    monkeypatch.delenv(dicomweb.TOKEN_ENV, raising=False)
    monkeypatch.setattr(dicomweb, "RETRY_DELAYS", (0.01, 0.02, 0.04))
    return pacs


def _segment(*args):
    return main(["segment", "--tags", "liver, spleen", "--device", "cpu", *map(str, args)])


def _instances(server, study, modality):
    client = dicomweb.connect(server.dicomweb)
    return client.search_for_instances(study_instance_uid=study, search_filters={"Modality": modality})


def test_pull_segment_store_and_read_the_seg_back(signed_in, tmp_path, capsys):
    import highdicom as hd

    server, study, model, ct3 = signed_in
    out = tmp_path / "labels.nii.gz"
    assert _segment("--dicomweb", server.dicomweb, "--study", study, "--model", model, "--output", out,
                    "--attention", tmp_path / "maps", "--store") == 0
    assert f"stored in study {study}" in capsys.readouterr().out
    seg_found = _instances(server, study, "SEG")
    assert len(seg_found) == 1
    client = dicomweb.connect(server.dicomweb)
    uid = lambda item, tag: item[tag]["Value"][0]   # noqa: E731
    seg = hd.seg.Segmentation.from_dataset(client.retrieve_instance(
        study, uid(seg_found[0], "0020000E"), uid(seg_found[0], "00080018")))
    ct = read_volume(ct3)
    labels = read_volume(out).array
    assert set(np.unique(labels)) == {0, 1}
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[h.SOPInstanceUID for h in ct.source.headers],
                                               combine_segments=True, skip_overlap_checks=True)
    np.testing.assert_array_equal(pixels.transpose(2, 1, 0), labels)          # voxel for voxel
    maps = [s for s in client.search_for_instances(study_instance_uid=study)
            if uid(s, "00080016") == "1.2.840.10008.5.1.4.1.1.30"]            # Parametric Map Storage
    assert len(maps) == 2                                                       # liver and spleen
    for item in maps:     # the deflated float maps as the server gives them back, on the grid, as written
        pm = client.retrieve_instance(study, uid(item, "0020000E"), uid(item, "00080018"))
        tag = pm.ContentDescription.removeprefix("MOSMOS attention map: ")
        written = read_volume(tmp_path / "maps" / f"{tag}.nii.gz").array
        np.testing.assert_allclose(pm.pixel_array.transpose(2, 1, 0), written, atol=1e-3)
    # The SR of the organs' volumes and QC, stored beside the SEG: the liver's group on the SEG's segment.
    (sr_found,) = _instances(server, study, "SR")
    report = hd.sr.Comprehensive3DSR.from_dataset(client.retrieve_instance(
        study, uid(sr_found, "0020000E"), uid(sr_found, "00080018")))
    (liver,) = report.content.get_volumetric_roi_measurement_groups()
    assert liver.tracking_identifier == "liver"
    assert liver.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    voxel_ml = abs(np.linalg.det(ct.affine[:3, :3])) / 1000
    assert liver.get_measurements()[0].value == pytest.approx(np.count_nonzero(labels == 1) * voxel_ml, rel=1e-3)

    # Redone (a resumed cohort, a second click): the same UIDs, so the study still holds one SEG and one SR.
    assert _segment("--dicomweb", server.dicomweb, "--study", study, "--model", model, "--store") == 0
    assert len(_instances(server, study, "SEG")) == 1 and len(_instances(server, study, "SR")) == 1


def test_netrc_and_token_credentials(signed_in, tmp_path, monkeypatch, capsys):
    server, study, model, _ = signed_in
    monkeypatch.delenv(dicomweb.USER_ENV)
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {server.user} password {server.password}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert dicomweb.find_series(server.dicomweb, study)[1] == 3    # signed in through the netrc file
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv(dicomweb.TOKEN_ENV, "not-a-valid-token")     # Orthanc's basic auth refuses a bearer token
    assert _segment("--dicomweb", server.dicomweb, "--study", study, "--model", model, "--output",
                    tmp_path / "l.nii.gz") == 1
    err = capsys.readouterr().err.strip()
    assert "401 Unauthorized" in err and dicomweb.TOKEN_ENV in err and len(err.splitlines()) == 1
    assert not (tmp_path / "l.nii.gz").exists()


def _one_line_error(capsys, *args):
    assert _segment(*args) == 1
    lines = capsys.readouterr().err.strip().splitlines()     # progress lines may come first, never a traceback
    assert lines[-1].startswith("mosmos segment: error:") and not any("Traceback" in line for line in lines), lines
    return lines[-1]


def test_bad_servers_studies_and_series_are_one_line_errors(signed_in, tmp_path, monkeypatch, capsys):
    server, study, model, _ = signed_in
    out = tmp_path / "l.nii.gz"
    down = f"http://127.0.0.1:{free_port()}/dicom-web"
    assert "failed after 4 tries (ConnectionError" in _one_line_error(
        capsys, "--dicomweb", down, "--study", study, "--model", model, "--output", out)
    assert "no study 1.2.3.4" in _one_line_error(
        capsys, "--dicomweb", server.dicomweb, "--study", "1.2.3.4", "--model", model, "--output", out)
    assert "has no series 1.2.3" in _one_line_error(
        capsys, "--dicomweb", server.dicomweb, "--study", study, "--series", "1.2.3", "--model", model, "--output", out)
    assert "no Frame of Reference UID" in _one_line_error(
        capsys, "--dicomweb", server.dicomweb, "--study", NO_FRAME_STUDY, "--model", model, "--store")
    assert "STOW-RS store refused" in _one_line_error(
        capsys, "--dicomweb", server.dicomweb, "--study", REFUSED_STUDY, "--model", model, "--output", out,
        "--store")
    # The SEG dropped, its SR kept: still an error, and nothing written here.
    assert "answered success but holds 1 of 2 instances" in _one_line_error(
        capsys, "--dicomweb", server.dicomweb, "--study", DROPPED_STUDY, "--model", model, "--output", out,
        "--store")
    assert not out.exists() and list(tmp_path.iterdir()) == []               # nothing half-written
    assert _instances(server, REFUSED_STUDY, "SEG") == []
    monkeypatch.setenv(dicomweb.PASSWORD_ENV, "wrong")
    assert "401 Unauthorized" in _one_line_error(
        capsys, "--dicomweb", server.dicomweb, "--study", study, "--model", model, "--output", out)
    assert "--study applies to --dicomweb" in _one_line_error(capsys, "x.nii.gz", "--study", study, "--model", model,
                                                              "--output", out)


class CuttingProxy(socketserver.ThreadingTCPServer):
    """Forwards HTTP to Orthanc one request per connection, but cuts the first ``cuts`` of one kind of request, as
    a dropped VPN or a restarting load balancer does: ``mode`` "series", WADO-RS series downloads after a few
    kilobytes; "stow", STOW-RS stores after Orthanc got them, before any reply; "stow down", STOW-RS stores before
    Orthanc sees them (the PACS gone between the pull and the store)."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, target_port: int, cuts: int, mode: str = "series"):
        self.target_port, self.cuts, self.mode, self.cut = target_port, cuts, mode, 0
        super().__init__(("127.0.0.1", 0), ProxyHandler)

    def __enter__(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()

    @property
    def dicomweb(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/dicom-web"


class ProxyHandler(socketserver.BaseRequestHandler):
    def handle(self):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.request.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            body += self.request.recv(65536)
        lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
        request = b"\r\n".join(lines + [b"Connection: close"]) + b"\r\n\r\n" + body
        proxy = self.server
        if lines[0].startswith(b"POST"):
            cut = proxy.mode.startswith("stow") and proxy.cut < proxy.cuts
        else:
            cut = proxy.mode == "series" and lines[0].startswith(b"GET") and \
                lines[0].split(b" ")[1].rstrip(b"/").split(b"/")[-2] == b"series"
            cut = cut and proxy.cut < proxy.cuts
        proxy.cut += cut
        if cut and proxy.mode == "stow down":
            return
        with socket.create_connection(("127.0.0.1", proxy.target_port)) as upstream:
            upstream.sendall(request)
            reply = b""
            while chunk := upstream.recv(65536):
                reply += chunk
        if cut:
            reply = reply[:4096] if proxy.mode == "series" else b""
        self.request.sendall(reply)


@pytest.mark.parametrize("cuts", [2, 100])
def test_cut_download_is_retried_then_one_line(signed_in, tmp_path, capsys, cuts):
    server, study, model, _ = signed_in
    out = tmp_path / "l.nii.gz"
    with CuttingProxy(_port(server), cuts) as proxy:
        args = ("--dicomweb", proxy.dicomweb, "--study", study, "--model", model, "--output", out)
        if cuts == 2:
            assert _segment(*args) == 0 and proxy.cut == 2
            assert out.exists()
        else:
            err = _one_line_error(capsys, *args)
            assert "WADO-RS retrieval" in err and "failed after 4 tries" in err and proxy.cut >= 3
            assert not out.exists()


def _port(server) -> int:
    return int(server.root.rsplit(":", 1)[1])


def _new_study(server, ct3, folder, name: str) -> str:
    """The 3-slice CT uploaded again as a study of its own (no SEG in it yet)."""
    study = pydicom.uid.generate_uid(entropy_srcs=[name, folder.name])
    server.upload(_copy(ct3, folder / name, study))
    return study


def test_a_store_whose_reply_is_cut_is_retried_and_stored_once(signed_in, tmp_path):
    server, _, model, ct3 = signed_in
    study = _new_study(server, ct3, tmp_path, "stow-cut")
    with CuttingProxy(_port(server), 1, "stow") as proxy:
        assert _segment("--dicomweb", proxy.dicomweb, "--study", study, "--model", model, "--store") == 0
        assert proxy.cut == 1
    assert len(_instances(server, study, "SEG")) == 1


def test_a_pacs_down_mid_store_leaves_nothing(signed_in, tmp_path, capsys):
    """The study pulled, then every STOW-RS request cut before it reaches the server: one line, exit 1, and no
    output, not even the folders that --output, --attention and --volumes would have made; in a cohort, the log's
    line and no case folder."""
    server, study, model, _ = signed_in
    work = tmp_path / "work"
    work.mkdir()
    with CuttingProxy(_port(server), 100, "stow down") as proxy:
        err = _one_line_error(capsys, "--dicomweb", proxy.dicomweb, "--study", study, "--model", model, "--store",
                              "--output", work / "new" / "sub" / "l.nii.gz", "--attention", work / "maps",
                              "--volumes", work / "volumes" / "v.json")
        assert f"{proxy.dicomweb}: STOW-RS store failed after 4 tries" in err and proxy.cut == 4
        assert list(work.iterdir()) == []
        manifest = tmp_path / "studies.csv"
        manifest.write_text(f"case,study\nct3,{study}\n")
        assert _segment("--inputs", manifest, "--out", work / "out", "--dicomweb", proxy.dicomweb, "--model", model,
                        "--attention", "maps", "--store") == 1
    # the log and the cohort's QC report (the failed case listed, no image of it), no case folder
    assert sorted(p.name for p in (work / "out").iterdir()) == ["cases.csv", "qc.html"]
    assert "<img" not in (work / "out" / "qc.html").read_text()
    assert "ct3,failed," in (work / "out" / "cases.csv").read_text()


def test_cohort_of_study_uids_stores_each_seg_once(signed_in, tmp_path, capsys):
    server, study, model, _ = signed_in
    manifest = tmp_path / "studies.csv"
    manifest.write_text(f"case,study\nct3,{study}\nrefused,{REFUSED_STUDY}\n")
    args = ["--inputs", manifest, "--out", tmp_path / "out", "--dicomweb", server.dicomweb, "--model", model,
            "--store"]
    before = len(_instances(server, study, "SEG"))
    assert _segment(*args) == 1                               # the refused study fails, alone
    log = (tmp_path / "out" / "cases.csv").read_text().splitlines()
    assert log[1].startswith("ct3,done,") and log[2].startswith("refused,failed,") and "403 Forbidden" in log[2]
    assert sorted(p.name for p in (tmp_path / "out" / "ct3").iterdir()) == ["labels.nii.gz", "volumes.json"]
    assert len(_instances(server, study, "SEG")) == max(before, 1)   # the same UIDs as any earlier run's SEG
    assert _segment(*args) == 1                               # resumed: ct3 is complete, only the failure is redone
    assert (tmp_path / "out" / "cases.csv").read_text().count("ct3,") == 1


def _shown(folder) -> bytes:
    """Every file under ``folder`` as bytes, gzip'd ones unpacked."""
    return b"".join(gzip.decompress(f.read_bytes()) if f.name.endswith(".gz") else f.read_bytes()
                    for f in sorted(folder.rglob("*")) if f.is_file())


def test_no_secret_is_ever_shown(signed_in, tmp_path, capfd, caplog):
    """Credentials in the URL are refused in one line that shows the URL without them and says where they belong;
    credentials from the environment work and appear on no channel: stdout (--json-progress events and the
    'stored' line), stderr, the logs, cases.csv, the written files."""
    server, study, model, _ = signed_in
    caplog.set_level(logging.DEBUG)      # requests', urllib3's and dicomweb-client's own logs too
    secret, user_info = server.password, f"{server.user}:{server.password}@"
    with_password = server.dicomweb.replace("://", f"://{user_info}")
    manifest = tmp_path / "studies.csv"
    manifest.write_text(f"case,study\nrefused,{REFUSED_STUDY}\n")
    for source in (("--study", study, "--output", tmp_path / "l.nii.gz"), ("--inputs", manifest, "--out", tmp_path)):
        assert _segment("--dicomweb", with_password, *source, "--model", model, "--json-progress") == 1
        out, err = capfd.readouterr()
        assert out == "" and err == (f"mosmos segment: error: {server.dicomweb}: credentials do not go in the "
                                     f"DICOMweb URL (a command line shows in ps and is kept in shell histories and job "
                                     f"logs); give them in {dicomweb.CREDENTIALS}\n")
    assert [p.name for p in tmp_path.iterdir()] == ["studies.csv"]      # refused before any work

    shown = []
    assert _segment("--dicomweb", server.dicomweb, "--inputs", manifest, "--out", tmp_path / "out", "--model", model,
                    "--attention", "maps", "--store", "--json-progress") == 1     # the refused study fails
    shown += capfd.readouterr()
    with open(tmp_path / "out" / "cases.csv", newline="") as f:
        errors = {row["case"]: row["error"] for row in csv.DictReader(f)}
    assert errors["refused"].startswith(f"{server.dicomweb}: STOW-RS store refused: 403")    # the URL, shown
    assert _segment("--dicomweb", server.dicomweb, "--study", study, "--model", model, "--store",
                    "--output", tmp_path / "l.nii.gz", "--volumes", tmp_path / "v.csv") == 0
    shown += capfd.readouterr()
    assert f"stored in study {study} at {server.dicomweb}\n" in shown[-2]
    shown.append(caplog.text)
    assert "/dicom-web/studies" in caplog.text      # the logs were captured
    for text in shown:
        assert secret not in text and user_info not in text
    assert secret.encode() not in _shown(tmp_path)


@pytest.mark.parametrize("url, shown", [
    ("http://pacs:8042/dicom-web", "http://pacs:8042/dicom-web"),
    ("https://user:pw@pacs/dicom-web", "https://pacs/dicom-web"),
    ("http://user:p@ss/w#rd?@pacs:8042/dicom-web", "http://pacs:8042/dicom-web"),   # unescaped, not URL syntax
    ("http://token%40x@pacs/dicom-web", "http://pacs/dicom-web"),
    ("user:pw@pacs/dicom-web", "pacs/dicom-web"),                                   # typed without a scheme
])
def test_urls_are_shown_without_user_info(url, shown):
    assert shown_url(url) == shown and has_user_info(url) == (url != shown)
    if url != shown:
        with pytest.raises(MosmosError, match=f"^{shown}: credentials do not go in the DICOMweb URL"):
            dicomweb.check_url(url)
