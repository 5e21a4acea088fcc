"""The models folder: the segmentation models installed for the GUI, the batch script and the command line
($MOSMOS_MODELS_DIR, else ~/MOSMOS/models). Listing, adding a file, pulling one over HTTP(S) (resumable,
verified before it lands), pulling by name from a lab's model index, removing.

A file only ever appears in the folder whole and verified: copies and downloads are made under the hidden
``.downloads`` sub-folder (same file system) and moved in with one ``os.replace``. An interrupted download
stays there and the next pull of the same URL resumes it with an HTTP Range request.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlparse

from ..errors import MosmosError
from . import modelcard
from .modelfile import PRETRAIN_KIND, SEGMENTATION_KIND

ENV_MODELS_DIR = "MOSMOS_MODELS_DIR"
DOWNLOADS = ".downloads"
INDEX_FORMAT = "mosmos-model-index"
CHUNK = 1 << 16  # what an interrupted read keeps: whole chunks reach the partial file
TIMEOUT_S = (10, 60)  # connect, and silence while reading

Progress = Callable[[int, int], None]  # (bytes done, total bytes or 0 when unknown)


def default_models_dir() -> Path:
    """$MOSMOS_MODELS_DIR, else ~/MOSMOS/models (shared by the GUI, batch script and command line)."""
    return Path(os.environ.get(ENV_MODELS_DIR) or Path.home() / "MOSMOS" / "models").expanduser()


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    path: Path
    kind: str
    modality: str
    organs: tuple[str, ...]
    size: int = 0
    header: dict = dataclasses.field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def display_name(self) -> str:
        return f"{self.path.stem} ({self.modality or '?'}, {len(self.organs)} organs)"

    @property
    def mean_dice(self) -> float | None:
        return modelcard.mean_dice(self.header)

    def card_text(self) -> str:
        return "\n".join(modelcard.card_lines(self.header))

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "size": self.size, **modelcard.summary(self.header),
                "kind": self.kind}


def model_kind(header: dict) -> str:
    """"segmentation" or "pretrained", the words people read, for the core's file kinds."""
    kind = str(header.get("kind", ""))
    return {SEGMENTATION_KIND: "segmentation", PRETRAIN_KIND: "pretrained"}.get(kind, kind)


def model_info(path: str | os.PathLike) -> ModelInfo:
    """What the header says (reads the header only)."""
    from .modelfile import read_header

    path = Path(path)
    header = read_header(path)
    return ModelInfo(path, model_kind(header), str(header.get("modality", "")),
                     tuple(name for _, name in modelcard.organs(header)), path.stat().st_size, header)


def list_models(folder: str | os.PathLike | None = None, kind: str | None = "segmentation") -> list[ModelInfo]:
    """Readable model files in ``folder`` (default: default_models_dir()), by name; other files are skipped.

    Args:
        folder: the models folder (None: default_models_dir()).
        kind: only models of this kind ("segmentation", "pretrained"); None: every kind.
    """
    folder = Path(folder) if folder else default_models_dir()
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        try:
            info = model_info(path)
        except MosmosError:
            continue
        if kind is None or info.kind == kind:
            found.append(info)
    return found


def _check_name(name: str) -> str:
    if not name or name.startswith(".") or Path(name).name != name or "\\" in name:
        raise MosmosError(f"{name!r}: not a model name (a plain file name, not starting with '.')")
    return name


def _target(folder: Path, name: str, force: bool) -> Path:
    target = folder / _check_name(name)
    if target.exists() and not force:
        raise MosmosError(f"{target}: a model of this name is already installed (--force replaces it)")
    return target


def _staging(folder: Path) -> Path:
    staging = folder / DOWNLOADS
    try:
        staging.mkdir(parents=True, exist_ok=True)
        probe = staging / ".probe"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise MosmosError(f"{folder}: cannot write to the models folder ({e.strerror or e})") from None
    return staging


def _verified_segmentation_model(path: Path, shown: str, header_only: bool = False) -> dict:
    """Full verification (format, every tensor group's digest; with ``header_only`` the header and kind
    alone); the header. Errors name ``shown``."""
    from .modelfile import load_model, read_header

    try:
        header = read_header(path) if header_only else load_model(path)[1]
    except MosmosError as e:
        reason = str(e)
        if reason.startswith(f"{path}: "):
            reason = reason[len(f"{path}: "):]
        raise MosmosError(f"{shown}: {reason}") from None
    if model_kind(header) != "segmentation":
        raise MosmosError(f"{shown}: a {model_kind(header) or 'non-segmentation'} model cannot segment; "
                          "add a fine-tuned segmentation model")
    return header


def _install(staged: Path, target: Path) -> ModelInfo:
    try:
        os.replace(staged, target)
    except OSError as e:
        raise MosmosError(f"{target}: cannot install the model ({e.strerror or e})") from None
    return model_info(target)


def add_model_file(source: str | os.PathLike, folder: str | os.PathLike | None = None,
                   name: str | None = None, force: bool = False) -> ModelInfo:
    """Verify ``source`` fully (header, tensors, checksums) and copy it into ``folder`` as ``name`` (default: the
    source's file name; training runs all write "model.safetensors", so they pass their own). A model of the
    same name is kept unless ``force``. Raises MosmosError naming the file when it is not a usable model.

    Args:
        source: the model file to add.
        folder: the models folder (None: default_models_dir()).
        name: the file name in the folder (None: the source's).
        force: replace a model of the same name.
    """
    source = Path(source)
    # The header before copying (a clear error for a wrong file); the tensors are verified once, in the copy.
    _verified_segmentation_model(source, str(source), header_only=True)
    folder = Path(folder) if folder else default_models_dir()
    target = folder / _check_name(name or source.name)
    if target.exists() and target.resolve() == source.resolve():
        _verified_segmentation_model(source, str(source))
        return model_info(target)
    _target(folder, target.name, force)
    staged = _staging(folder) / f"{target.name}.copy"
    try:
        shutil.copyfile(source, staged)
        # the copy is what gets verified: damage in the source and a full disk or failing drive show here
        _verified_segmentation_model(staged, str(source))
        return _install(staged, target)
    except OSError as e:
        raise MosmosError(f"{target}: cannot copy the model ({e.strerror or e})") from None
    finally:
        staged.unlink(missing_ok=True)
        _tidy(staged.parent)


def remove_model(name: str, folder: str | os.PathLike | None = None) -> Path:
    folder = Path(folder) if folder else default_models_dir()
    path = folder / _check_name(name)
    if not path.is_file():
        names = ", ".join(m.name for m in list_models(folder, kind=None)) or "none"
        raise MosmosError(f"{name}: no such model in {folder} (installed: {names})")
    try:
        path.unlink()
    except OSError as e:
        raise MosmosError(f"{path}: cannot remove ({e.strerror or e})") from None
    return path


def _name_from_url(url: str) -> str:
    name = Path(unquote(urlparse(url).path)).name
    if not name:
        raise MosmosError(f"{url}: the URL names no file; give the model a name with --name")
    return name


def _partial_paths(staging: Path, url: str, name: str) -> tuple[Path, Path]:
    key = hashlib.sha256(url.encode()).hexdigest()[:12]
    part = staging / f"{name}.{key}.part"
    return part, part.with_suffix(".json")


def pull_model(url: str, folder: str | os.PathLike | None = None, sha256: str | None = None,
               name: str | None = None, force: bool = False, progress: Progress | None = None) -> ModelInfo:
    """Download a model over HTTP(S) into the models folder, resuming an earlier interrupted pull of the same
    URL. Verified before it lands: the file's SHA-256 against ``sha256`` when given, and always the model
    file's own checks (format, every tensor group's digest). A tampered download is deleted; an interrupted
    one stays, resumable, in the hidden download folder; the folder's models are never touched until then.

    Args:
        url: an http(s) URL of a model file.
        folder: the models folder (None: default_models_dir()).
        sha256: the file's expected SHA-256 (hex), checked when given.
        name: the file name in the folder (None: the URL's last part).
        force: replace a model of the same name.
        progress: ``progress(done, total)`` in bytes as the download goes (total 0 when unknown).
    """
    folder = Path(folder) if folder else default_models_dir()
    expected = _check_sha256(sha256) if sha256 else None
    target = _target(folder, name or _name_from_url(url), force)
    part, meta = _partial_paths(_staging(folder), url, target.name)
    try:
        _download(url, part, meta, progress)
    finally:
        _tidy(part.parent)  # nothing fetched (a 404, a refused connection): no hidden folder left behind
    if expected:
        got = modelcard.file_sha256(part)
        if got != expected:
            _discard(part, meta)
            raise MosmosError(f"{url}: checksum mismatch: SHA-256 {got} is not the expected {expected}; "
                              "the download was discarded")
    try:
        _verified_segmentation_model(part, url)
    except MosmosError:
        _discard(part, meta)
        raise
    meta.unlink(missing_ok=True)
    info = _install(part, _target(folder, target.name, force))
    _tidy(part.parent)
    return info


def _check_sha256(value: str) -> str:
    value = value.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise MosmosError(f"SHA-256 {value!r}: not 64 hexadecimal digits")
    return value


def _discard(*paths: Path) -> None:
    for p in paths:
        p.unlink(missing_ok=True)
    _tidy(paths[0].parent)


def _tidy(staging: Path) -> None:
    """Remove the hidden download folder once nothing in it waits to be resumed."""
    try:
        staging.rmdir()
    except OSError:  # not empty (a partial download to resume) or already gone
        pass


def _download(url: str, part: Path, meta: Path, progress: Progress | None) -> None:
    """Fetch ``url`` into ``part``, continuing from its current size when the server serves ranges of the same
    file (If-Range with the validator seen when the partial file was started)."""
    import requests

    if urlparse(url).scheme not in ("http", "https"):
        raise MosmosError(f"{url}: not an http(s) URL (to install a local file use `mosmos models add`)")
    start = part.stat().st_size if part.exists() else 0
    validator = _read_validator(meta) if start else None
    headers = {"Range": f"bytes={start}-", **({"If-Range": validator} if validator else {})} if start else {}
    try:
        with requests.get(url, headers=headers, stream=True, timeout=TIMEOUT_S) as r:
            if r.status_code == 416 and start:  # the partial is no prefix of what the server has: start over
                part.unlink()
                return _download(url, part, meta, progress)
            if r.status_code >= 400:
                raise MosmosError(f"{url}: HTTP {r.status_code} {r.reason or ''}".rstrip())
            resumed = r.status_code == 206 and r.headers.get("Content-Range", "").startswith(f"bytes {start}-")
            if not resumed:
                start = 0
            length = int(r.headers.get("Content-Length") or 0)
            total = start + length if length else 0
            validator = r.headers.get("ETag") or r.headers.get("Last-Modified")
            _write_validator(meta, validator)
            done = start
            with open(part, "ab" if resumed else "wb") as f:
                for chunk in r.iter_content(CHUNK):
                    f.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
    except requests.exceptions.ConnectionError as e:
        if part.exists() and part.stat().st_size > start:  # the connection broke while reading
            raise MosmosError(f"{url}: download interrupted after {part.stat().st_size} bytes; "
                              "pull again to resume") from None
        raise MosmosError(f"{url}: cannot connect ({_reason(e)})") from None
    except requests.exceptions.Timeout:
        raise MosmosError(f"{url}: no answer within {TIMEOUT_S[1]} s; pull again to resume") from None
    except requests.exceptions.RequestException as e:
        raise MosmosError(f"{url}: download interrupted ({_reason(e)}); pull again to resume") from None
    except OSError as e:
        raise MosmosError(f"{part}: cannot write the download ({e.strerror or e})") from None
    if total and done != total:
        raise MosmosError(f"{url}: download interrupted at {done} of {total} bytes; pull again to resume")


def _reason(e: BaseException) -> str:
    """The innermost cause of a requests error, in one short line (urllib3 nests them deeply)."""
    while e.__context__ is not None and e.__context__ is not e:
        e = e.__context__
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text.split("] ")[-1][:200]


def _read_validator(meta: Path) -> str | None:
    try:
        return json.loads(meta.read_text()).get("validator")
    except (OSError, ValueError, AttributeError):
        return None


def _write_validator(meta: Path, validator: str | None) -> None:
    if validator:
        meta.write_text(json.dumps({"validator": validator}))
    else:
        meta.unlink(missing_ok=True)


# ---- model indexes: one JSON file by which a lab publishes its models ----

def read_index(source: str) -> list[dict[str, Any]]:
    """The entries of a model index (a local JSON file or an http(s) URL), with their URLs made absolute
    (relative to the index, so a lab can publish the index next to its files)."""
    if urlparse(source).scheme in ("http", "https"):
        import requests

        try:
            r = requests.get(source, timeout=TIMEOUT_S)
        except requests.exceptions.RequestException as e:
            raise MosmosError(f"{source}: cannot read the model index ({_reason(e)})") from None
        if r.status_code >= 400:
            raise MosmosError(f"{source}: HTTP {r.status_code} {r.reason or ''}".rstrip())
        text, base = r.text, source
    else:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise MosmosError(f"{source}: cannot read the model index ({getattr(e, 'strerror', None) or e})") from None
        base = None
    try:
        index = json.loads(text)
        entries = index["models"]
        if index.get("format") != INDEX_FORMAT or not isinstance(entries, list):
            raise ValueError
        for e in entries:
            if not (isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("url"), str)):
                raise ValueError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise MosmosError(f"{source}: not a MOSMOS model index (a JSON object with format "
                          f"'{INDEX_FORMAT}' and a list of models with name and url)") from None
    return [{**e, "url": urljoin(base, e["url"]) if base else e["url"]} for e in entries]


def pull_from_index(source: str, name: str, folder: str | os.PathLike | None = None, force: bool = False,
                    progress: Progress | None = None) -> ModelInfo:
    entries = read_index(source)
    matches = [e for e in entries if e["name"] == name]
    if not matches:
        names = ", ".join(e["name"] for e in entries) or "none"
        raise MosmosError(f"{name}: not in the model index {source} (it lists: {names})")
    entry = matches[0]
    return pull_model(entry["url"], folder, sha256=entry.get("sha256"), name=entry["name"], force=force,
                      progress=progress)


def make_index(files: list[str | os.PathLike], base_url: str = "") -> dict[str, Any]:
    """An index of model files, to publish next to them: name, url (``base_url`` + file name), SHA-256, size
    and the card's summary of each."""
    entries = []
    for f in files:
        f = Path(f)
        header = _verified_segmentation_model(f, str(f))
        entries.append({"name": f.name, "url": base_url + f.name, "sha256": modelcard.file_sha256(f),
                        "size": f.stat().st_size, **modelcard.summary(header)})
    return {"format": INDEX_FORMAT, "models": entries}
