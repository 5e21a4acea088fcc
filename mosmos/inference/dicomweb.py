"""DICOMweb in and out (dicomweb-client, as MONAI Label uses): QIDO-RS finds a study's series, WADO-RS fetches
one into a folder that mosmos.inference.dicom reads like any export, and STOW-RS sends results back into the
study.

Credentials never travel on the command line: a bearer token from MOSMOS_DICOMWEB_TOKEN, a user and password
from MOSMOS_DICOMWEB_USER / MOSMOS_DICOMWEB_PASSWORD, or else the netrc file (~/.netrc, or the file NETRC
names) that requests reads for the server's host. A URL with user info (http://user:password@host/...) is
refused in one line saying so, before any work: a command line is readable by every user of the machine (ps,
/proc) and kept in shell histories and job logs. A cut connection or a busy server (502/503/504) is retried
with backoff (RETRY_DELAYS); every other failure is one line naming the server (mosmos.files.redact.shown_url)
and what went wrong.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from ..errors import MosmosError
from ..files.redact import has_user_info, shown_url

TOKEN_ENV, USER_ENV, PASSWORD_ENV = "MOSMOS_DICOMWEB_TOKEN", "MOSMOS_DICOMWEB_USER", "MOSMOS_DICOMWEB_PASSWORD"
CREDENTIALS = f"{TOKEN_ENV}, or {USER_ENV} and {PASSWORD_ENV}, or a netrc entry for the host"
RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)   # seconds before each new try; a PACS restarting is back within ~15 s
RETRIED_STATUS = (502, 503, 504)
# Series that are results, not images to segment: a SEG, parametric maps, reports, presentation states ...
NOT_IMAGES = {"SEG", "RWV", "SR", "PR", "KO", "DOC", "RTSTRUCT", "RTPLAN", "RTDOSE", "REG", "OT"}
TIMEOUT = 60          # seconds without a byte from the server before a try counts as failed


def connect(url: str):
    """A DICOMwebClient for ``url`` with the credentials of the environment or the netrc file."""
    try:
        from dicomweb_client.api import DICOMwebClient
        from dicomweb_client.session_utils import create_session
    except ImportError:
        raise MosmosError("DICOMweb needs the dicomweb-client package: pip install dicomweb-client") from None
    check_url(url)
    session = create_session()   # trust_env: requests reads the netrc file for the host when nothing else is set
    token, user = os.environ.get(TOKEN_ENV), os.environ.get(USER_ENV)
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    elif user:
        session.auth = (user, os.environ.get(PASSWORD_ENV, ""))
    # dicomweb-client's retry wrapper logs every failed try as a WARNING with a traceback, which Python's last-resort
    # handler prints on the terminal; _call reports the failure itself, in one line.
    logging.getLogger("retrying").setLevel(logging.CRITICAL)
    client = DICOMwebClient(url.rstrip("/"), session=session, timeout=TIMEOUT)
    client.set_http_retry_params(retry=False)   # one retry policy, ours (_call), for every kind of failure
    return client


def check_url(url: str) -> None:
    """Refuse, in one line, a URL that is not http(s) or that carries credentials (see the module's docstring)."""
    if has_user_info(url):
        raise MosmosError(f"{shown_url(url)}: credentials do not go in the DICOMweb URL (a command line shows in ps "
                          f"and is kept in shell histories and job logs); give them in {CREDENTIALS}")
    if not str(url).startswith(("http://", "https://")):
        raise MosmosError(f"{shown_url(url)}: a DICOMweb URL starts with http:// or https://")


def _call(url: str, what: str, request):
    """``request()`` with retries of cut connections and busy servers; anything else -> one-line MosmosError."""
    import requests

    for attempt in range(len(RETRY_DELAYS) + 1):
        try:
            return request()
        except requests.HTTPError as e:
            status = e.response.status_code if e.response is not None else None
            if status in RETRIED_STATUS and attempt < len(RETRY_DELAYS):
                time.sleep(RETRY_DELAYS[attempt])
                continue
            raise MosmosError(f"{shown_url(url)}: {what} refused: {_status_text(e.response)}") from None
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
            if attempt < len(RETRY_DELAYS):
                time.sleep(RETRY_DELAYS[attempt])
                continue
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise MosmosError(f"{shown_url(url)}: {what} failed after {attempt + 1} tries ({type(e).__name__}: "
                              f"{reason[:160]})") from None
        except ValueError as e:   # a reply that is not the DICOM or JSON it should be, or cut short (Incomplete)
            if attempt < len(RETRY_DELAYS):
                time.sleep(RETRY_DELAYS[attempt])
                continue
            raise MosmosError(f"{shown_url(url)}: {what} failed after {attempt + 1} tries "
                              f"({e})".splitlines()[0]) from None


def _status_text(response) -> str:
    if response is None:
        return "no reply"
    text = f"{response.status_code} {response.reason}"
    if response.status_code == 401:
        text += f" (credentials: {CREDENTIALS})"
    elif response.status_code == 403:
        text += " (the server does not allow this to these credentials)"
    return text


def _value(item: dict, tag: str):
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


class Incomplete(ValueError):
    """A download that ended early without an error from the connection (a multipart reply cut at a boundary)."""


def find_series(url: str, study: str, series: str | None = None, client=None) -> tuple[str, int]:
    """The Series Instance UID to fetch and its number of instances: ``series`` when the study holds it, else the
    image series with the most instances (QIDO-RS); one-line errors for a study or series the server does not
    know."""
    client = client or connect(url)
    found = _call(url, f"QIDO-RS search of study {study}",
                  lambda: client.search_for_series(study_instance_uid=study,
                                                   fields=["NumberOfSeriesRelatedInstances", "Modality"]))
    if not found:
        raise MosmosError(f"{shown_url(url)}: no study {study} (QIDO-RS found no series)")
    listing = {_value(s, "0020000E"): (_value(s, "00080060"), int(_value(s, "00201209") or 0)) for s in found}
    if series:
        if series not in listing:
            raise MosmosError(f"{shown_url(url)}: study {study} has no series {series} (it has "
                              f"{', '.join(map(str, listing))})")
        return series, listing[series][1]
    images = {uid: n for uid, (modality, n) in listing.items() if modality not in NOT_IMAGES}
    if not images:
        kinds = ", ".join(sorted({str(m) for m, _ in listing.values()}))
        raise MosmosError(f"{shown_url(url)}: study {study} holds no image series (only {kinds})")
    chosen = max(images, key=images.get)
    return chosen, images[chosen]


def retrieve_series(url: str, study: str, series: str | None, folder, client=None) -> str:
    """Fetch one series of ``study`` (``series``, or the largest image series) with WADO-RS into ``folder`` as
    <SOP Instance UID>.dcm files; returns its Series Instance UID."""
    client = client or connect(url)
    series, expected = find_series(url, study, series, client)

    def complete():
        datasets = client.retrieve_series(study_instance_uid=study, series_instance_uid=series)
        if len(datasets) < expected:
            raise Incomplete(f"{len(datasets)} of {expected} instances arrived")
        return datasets

    datasets = _call(url, f"WADO-RS retrieval of series {series}", complete)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for n, ds in enumerate(datasets):
        name = str(ds.get("SOPInstanceUID", "") or f"instance-{n}")
        ds.save_as(str(folder / f"{name}.dcm"), enforce_file_format=True)
    return series


def read_series(url: str, study: str, series: str | None, folder, client=None):
    """A Volume (mosmos.inference.volume) of a study's series fetched into ``folder`` (which must outlive
    its use: the volume's DicomSource names the files)."""
    from .io import read_volume

    series = retrieve_series(url, study, series, folder, client)
    return read_volume(folder, series)


def store(url: str, datasets: list, client=None) -> None:
    """Send ``datasets`` (a SEG and maps of one study) with one STOW-RS request, then ask the server (QIDO-RS)
    whether it holds them. Each keeps its SOP Instance UID, so a request repeated after a cut connection stores
    nothing twice; refused, partly refused or silently dropped -> error."""
    if not datasets:
        return
    client = client or connect(url)
    study = str(datasets[0].StudyInstanceUID)
    reply = _call(url, "STOW-RS store", lambda: client.store_instances(datasets, study_instance_uid=study))
    failed = reply.get("FailedSOPSequence") if reply is not None else None
    if failed:
        reasons = ", ".join(f"{item.get('ReferencedSOPInstanceUID', '?')} (reason "
                            f"{item.get('FailureReason', '?')})" for item in failed)
        raise MosmosError(f"{shown_url(url)}: STOW-RS store refused {len(failed)} of {len(datasets)} instances: "
                          f"{reasons}")
    # A server may answer success and still drop an instance (Orthanc's ReceivedInstanceFilter does): ask it back.
    held = set()
    for series in {str(ds.SeriesInstanceUID) for ds in datasets}:
        found = _call(url, "QIDO-RS check of the stored instances", lambda: client.search_for_instances(
            study_instance_uid=study, series_instance_uid=series, fields=["SOPInstanceUID"]))
        held.update(_value(item, "00080018") for item in found)
    missing = [str(ds.SOPInstanceUID) for ds in datasets if str(ds.SOPInstanceUID) not in held]
    if missing:
        kept = len(datasets) - len(missing)
        raise MosmosError(f"{shown_url(url)}: STOW-RS store refused: the server answered success but holds {kept} of "
                          f"{len(datasets)} instances (filtered out by its policy?), e.g. {missing[0]}")
