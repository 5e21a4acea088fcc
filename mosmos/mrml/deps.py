"""Python dependencies of the mosmos core, installed into Slicer's Python at first use.

ensure_dependencies() is the one guard: every Lib entry point that needs torch, safetensors, nibabel, monai or
open_clip (in this process or in the background process it starts) calls it first, so a fresh Slicer installs
them (or says why it cannot) instead of failing with an ImportError.

The requirements are one list, the core's pyproject.toml ([project] dependencies). The extension ships it beside
the mosmos package (the checkout's root; qt-scripted-modules of an installed extension, see CMakeLists.txt), so
it is found two folders above this file in both. What Slicer or the PyTorch extension owns (PROTECTED) is never
installed from it, and is pinned to the installed version by a constraints file while the rest is installed, so
installing never replaces Slicer's numpy, SimpleITK, requests, pydicom, highdicom, Pillow or the PyTorch
extension's torch. PyTorch comes from the PyTorch extension (it picks the CUDA build that fits the driver).

Slicer 5.12 and later install with slicer.packaging.pip_ensure (it asks first, shows progress, and offers a
restart when a package that was already imported got updated); 5.10 and 5.11, which lack slicer.packaging,
with slicer.util.pip_install."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from mosmos.errors import MosmosError

if TYPE_CHECKING:
    from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
# Distributions Slicer (or the PyTorch extension) owns, as canonical names: pinned, never installed here.
PROTECTED = ("numpy", "simpleitk", "requests", "torch", "torchvision", "pydicom", "highdicom", "pillow")
REQUESTER = "MOSMOS"  # pip_ensure's dialogs name who asks


def requirements(pyproject: Path | None = None) -> list[Requirement]:
    """pyproject.toml's [project] dependencies, less the protected distributions. A core pip-installed from a
    wheel (the web app) has no pyproject.toml beside it: its metadata, made from that list, stands in."""
    # Imported where used: tomllib needs Python 3.11 (Slicer has 3.12) and packaging comes with Slicer and pip
    # environments, so that importing mosmos.mrml needs neither.
    import tomllib

    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    pyproject = pyproject or PYPROJECT
    try:
        if pyproject.is_file() or not _installed_core():
            with open(pyproject, "rb") as f:
                listed = tomllib.load(f)["project"]["dependencies"]
        else:
            listed = [text for text in importlib.metadata.requires("mosmos") or [] if "extra ==" not in text]
        wanted = [Requirement(text) for text in listed]
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, InvalidRequirement) as e:
        raise MosmosError(f"{pyproject}: cannot read the core's dependencies ({type(e).__name__}: {e})") from None
    return [req for req in wanted if canonicalize_name(req.name) not in PROTECTED]


def _installed_core() -> bool:
    try:
        importlib.metadata.distribution("mosmos")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def unsatisfied(wanted: list[Requirement]) -> list[Requirement]:
    """Those not installed at a version their specifier allows (requirements whose marker excludes this
    platform are satisfied)."""
    missing = []
    for req in wanted:
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(req)
            continue
        if not req.specifier.contains(installed, prereleases=True):
            missing.append(req)
    return missing


def constraints_text() -> str:
    lines = []
    for dist in PROTECTED:
        try:
            lines.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return "\n".join(lines) + "\n"


def _ask_confirmation(ask_confirmation: bool | None) -> bool:
    """None: ask, except where no one answers a dialog: Slicer's --testing mode and a batch run without
    a main window (--no-main-window --python-script), which would otherwise wait on it for ever."""
    if ask_confirmation is not None:
        return ask_confirmation
    import slicer

    app = getattr(slicer, "app", None)
    if app is None:
        return True
    options = app.commandOptions()
    return not (options.testingEnabled or getattr(options, "noMainWindow", False))


def ensure_torch(ask_confirmation: bool | None = None) -> None:
    if importlib.util.find_spec("torch") is not None:
        return
    try:
        import PyTorchUtils
    except ImportError:
        raise MosmosError("PyTorch: not installed, and the PyTorch extension is missing; "
                          "install the PyTorch extension from the Extensions Manager") from None
    logic = PyTorchUtils.PyTorchUtilsLogic()
    if not logic.torchInstalled():
        torch = logic.installTorch(_ask_confirmation(ask_confirmation))
        if torch is None:
            raise MosmosError("PyTorch: installation was cancelled or failed")


def _pip_ensure_api():
    """slicer.packaging.pip_ensure where this Slicer has it (5.12 and later), else None."""
    try:
        from slicer import packaging
    except ImportError:
        return None
    return getattr(packaging, "pip_ensure", None)


def _install(wanted: list[str], constraints: str, ask: bool) -> None:
    import slicer

    pip_ensure = _pip_ensure_api()
    try:
        if pip_ensure is None:
            # One string: every Slicer 5 pip_install splits it with shlex, so the quoted path survives spaces.
            slicer.util.pip_install(" ".join(["-c", shlex.quote(constraints)] + [shlex.quote(r) for r in wanted]))
        else:
            # No dialog where no one answers one (ask is False): none before, none for the restart, a busy
            # cursor instead of the progress window. The self-test needs the packages, so --testing installs too.
            pip_ensure(wanted, constraints=constraints, prompt_install=ask, prompt_restart=ask,
                       requester=REQUESTER, skip_in_testing=False, show_progress=ask)
    except subprocess.CalledProcessError as e:
        raise MosmosError(f"Python packages: pip failed (exit code {e.returncode}); see the Python console") from None
    except RuntimeError as e:  # pip_ensure: "User declined package installation"
        raise MosmosError(f"Python packages: installation was cancelled ({e})") from None


def ensure_dependencies(ask_confirmation: bool | None = None) -> list[str]:
    """Install whatever is missing; returns the pip requirements that were installed."""
    ensure_torch(ask_confirmation)
    wanted = [str(req) for req in unsatisfied(requirements())]
    if not wanted:
        return []
    fd, constraints = tempfile.mkstemp(prefix="mosmos-constraints-", suffix=".txt")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(constraints_text())
        _install(wanted, constraints, _ask_confirmation(ask_confirmation))
    finally:
        os.unlink(constraints)
    importlib.invalidate_caches()
    still = unsatisfied(requirements())
    if still:
        raise MosmosError(f"Python packages: {', '.join(map(str, still))} could not be installed; "
                          "see the Python console")
    return wanted
