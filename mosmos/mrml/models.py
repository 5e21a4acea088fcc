"""The models folder as the Slicer modules see it: the core's mosmos.files.model_store (one copy of the logic for
the GUI, the batch script and `mosmos models`), plus what the model selector shows and the background pull."""

from __future__ import annotations

import os

from mosmos.files import model_store
from mosmos.errors import MosmosError
from mosmos.files.model_store import (ENV_MODELS_DIR, ModelInfo, default_models_dir, list_models, model_info, model_kind)

from . import deps


def add_model_file(source: str | os.PathLike, folder: str | os.PathLike | None = None, name: str | None = None,
                   force: bool = False) -> ModelInfo:
    """model_store.add_model_file once the core's dependencies are there: its full check reads the tensors
    (safetensors, torch), which a fresh Slicer has neither of."""
    deps.ensure_dependencies()
    return model_store.add_model_file(source, folder, name, force)


def tooltip(info: ModelInfo) -> str:
    """The model card, for the model selector's tooltip."""
    return f"{info.name} ({info.size / 1e6:.0f} MB)\n{info.card_text()}"


def pull_command(source: str, folder: str | os.PathLike, force: bool = False) -> list[str]:
    """`mosmos models pull` for a background process (process.BackgroundProcess reads its progress events):
    ``source`` is a model URL, or "INDEX_URL_OR_FILE NAME" (an index and the name of one of its models)."""
    from .process import interpreter

    parts = source.split()
    if len(parts) == 2:
        argv = ["pull", "--index", parts[0], parts[1]]
    elif len(parts) == 1:
        argv = ["pull", parts[0]]
    else:
        raise MosmosError(f"{source!r}: give a model URL, or an index URL and a model name")
    return ([interpreter(), "-m", "mosmos", "models"] + argv
            + ["--folder", os.fspath(folder), "--json-progress"] + (["--force"] if force else []))


class ModelDownload:
    """`mosmos models pull` in a background process, for the GUI: ``poll()`` gives its events (progress with
    done/total bytes, log lines, exit) without blocking; ``cancel()`` stops it and keeps the partial file, so
    the next download of the same model resumes; ``result()`` after the exit is the installed model or the
    child's one-line error (None when cancelled)."""

    def __init__(self, source: str, folder: str | os.PathLike, force: bool = False):
        from .process import BackgroundProcess, child_environment

        self.process = BackgroundProcess(pull_command(source, folder, force=force), env=child_environment())
        self.path: str | None = None

    def start(self) -> "ModelDownload":
        deps.ensure_dependencies()  # the pull verifies the file with the core (safetensors, torch)
        self.process.start()
        return self

    def poll(self) -> list[dict]:
        events = self.process.poll()
        for event in events:
            if event.get("event") == "done":
                self.path = event.get("path")
        return events

    def cancel(self, wait: bool = True) -> None:
        """``wait=False`` returns at once (a GUI button); the exit event follows."""
        self.process.cancel(wait=wait)

    def result(self) -> ModelInfo | None:
        """The installed model; None when cancelled. Raises MosmosError (why the pull failed)."""
        if self.process.cancelled:
            return None
        self.process.check()
        if not self.path:
            raise MosmosError("the download ended without installing a model")
        return model_info(self.path)
