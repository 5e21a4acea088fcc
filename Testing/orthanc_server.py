"""A real Orthanc (Debian's orthanc and orthanc-dicomweb packages) on 127.0.0.1 for the DICOMweb tests: a free port,
a generated configuration with HTTP basic authentication on, storage in a temporary folder. Where the packages are
missing the tests skip, saying why; MOSMOS_REQUIRE_ORTHANC=1 (set by .ci/run) turns that skip into a failure."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
# PACS policies (Testing/test_dicomweb.py): STOW-RS into one study is refused (403 Forbidden); a SEG sent into
# another is answered with success but dropped (Orthanc's ReceivedInstanceFilter does that to STOW-RS).
REFUSING_LUA = """
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  return not (method == 'POST' and string.find(uri, '{study}', 1, true))
end

function ReceivedInstanceFilter(dicom, origin, info)
  return not (dicom.Modality == 'SEG' and dicom.StudyInstanceUID == '{dropped}')
end
"""


@dataclass
class Orthanc:
    root: str          # http://127.0.0.1:PORT
    user: str
    password: str

    @property
    def dicomweb(self) -> str:
        return f"{self.root}/dicom-web"

    def upload(self, files) -> None:
        import requests

        for f in files:
            r = requests.post(f"{self.root}/instances", data=Path(f).read_bytes(), auth=(self.user, self.password),
                              timeout=30)
            r.raise_for_status()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orthanc_or_skip() -> str:
    executable = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    reason = None
    if not Path(executable).exists():
        reason = "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)"
    elif not PLUGIN.exists():
        reason = f"the DICOMweb plugin {PLUGIN} is not installed (apt-get install orthanc-dicomweb)"
    if reason:
        if os.environ.get("MOSMOS_REQUIRE_ORTHANC") == "1":
            pytest.fail(f"MOSMOS_REQUIRE_ORTHANC=1 but {reason}")
        pytest.skip(reason)
    return executable


def start_orthanc(folder: Path, refused_study: str = "none", dropped_study: str = "none"):
    """Start Orthanc with its storage in ``folder``; returns (Orthanc, process). STOW-RS into ``refused_study`` is
    refused, and a SEG sent into ``dropped_study`` dropped after a success reply, by Lua filters."""
    import requests

    executable = orthanc_or_skip()
    port = free_port()
    server = Orthanc(f"http://127.0.0.1:{port}", "mosmos", secrets.token_hex(8))
    (folder / "filter.lua").write_text(REFUSING_LUA.replace("{study}", refused_study).replace("{dropped}",
                                                                                             dropped_study))
    config = {
        "Name": "MOSMOS-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True, "RegisteredUsers": {server.user: server.password},
        "Plugins": [str(PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "LuaScripts": [str(folder / "filter.lua")], "HttpThreadsCount": 4, "StorageCompression": False,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "w")
    proc = subprocess.Popen([executable, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {proc.returncode}: {(folder / 'orthanc.log').read_text()[-2000:]}")
        try:
            if requests.get(f"{server.root}/system", auth=(server.user, server.password), timeout=2).ok:
                return server, proc
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"Orthanc did not answer on port {port} within 30 s")


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
