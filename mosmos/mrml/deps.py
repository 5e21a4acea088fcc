"""Python dependencies of the mosmos core, installed into Slicer's Python at first use.

ensure_dependencies() is the one guard: every Lib entry point that needs torch, safetensors, nibabel, monai or
open_clip (in this process or in the background process it starts) calls it first, so a fresh Slicer installs
them (or says why it cannot) instead of failing with an ImportError.

PyTorch comes from the PyTorch extension (it picks the CUDA build that fits the driver); the rest via
slicer.util.pip_install with a constraints file that pins what Slicer already ships, so installing
never replaces Slicer's numpy, SimpleITK, requests, pydicom, highdicom, Pillow (or the PyTorch just installed)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shlex
import tempfile

from mosmos.errors import MosmosError

# import name -> pip requirement, for the core's run-time needs besides torch.
REQUIREMENTS = {
    "open_clip": "open_clip_torch>=2.24",
    "monai": "monai>=1.3",
    "nibabel": "nibabel>=5",
    "safetensors": "safetensors>=0.4",
    "scipy": "scipy>=1.10",
    "tqdm": "tqdm>=4.60",
    "psutil": "psutil",
    "isal": "isal>=1.6",
    "gdcm": "python-gdcm>=3.0.22",  # decodes JPEG Lossless DICOM; Slicer ships pydicom and highdicom, not gdcm
}
# Distributions Slicer (or the PyTorch extension) owns: pinned to the installed version while installing.
PROTECTED = ("numpy", "SimpleITK", "requests", "torch", "torchvision", "pydicom", "highdicom", "pillow")


def missing_modules() -> list[str]:
    return [name for name in ("torch", *REQUIREMENTS) if importlib.util.find_spec(name) is None]


def constraints_text() -> str:
    lines = []
    for dist in PROTECTED:
        try:
            lines.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return "\n".join(lines) + "\n"


def _ask_confirmation(askConfirmation: bool | None) -> bool:
    """None: ask, except where no one answers a dialog: Slicer's --testing mode and a batch run without
    a main window (--no-main-window --python-script), which would otherwise wait on it for ever."""
    if askConfirmation is not None:
        return askConfirmation
    import slicer

    app = getattr(slicer, "app", None)
    if app is None:
        return True
    options = app.commandOptions()
    return not (options.testingEnabled or getattr(options, "noMainWindow", False))


def ensure_torch(askConfirmation: bool | None = None) -> None:
    if importlib.util.find_spec("torch") is not None:
        return
    try:
        import PyTorchUtils
    except ImportError:
        raise MosmosError("PyTorch: not installed, and the PyTorch extension is missing; "
                          "install the PyTorch extension from the Extensions Manager") from None
    logic = PyTorchUtils.PyTorchUtilsLogic()
    if not logic.torchInstalled():
        torch = logic.installTorch(_ask_confirmation(askConfirmation))
        if torch is None:
            raise MosmosError("PyTorch: installation was cancelled or failed")


def ensure_dependencies(askConfirmation: bool | None = None) -> list[str]:
    """Install whatever is missing; returns the pip requirements that were installed."""
    ensure_torch(askConfirmation)
    wanted = [req for name, req in REQUIREMENTS.items() if importlib.util.find_spec(name) is None]
    if not wanted:
        return []
    import slicer

    fd, constraints = tempfile.mkstemp(prefix="mosmos-constraints-", suffix=".txt")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(constraints_text())
        # One string: every Slicer 5 pip_install splits it with shlex, so the quoted path survives spaces.
        slicer.util.pip_install(" ".join(["-c", shlex.quote(constraints)] + wanted))
    finally:
        os.unlink(constraints)
    importlib.invalidate_caches()
    still = [name for name in REQUIREMENTS if importlib.util.find_spec(name) is None]
    if still:
        raise MosmosError(f"Python packages: {', '.join(still)} could not be installed; see the Python console")
    return wanted
