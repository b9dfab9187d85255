"""The paths a command reads and writes, checked before its work starts: a model directory that
is there, a destination that holds nothing the user made (unless `--overwrite`), an output file
that can be written; and a new directory that appears whole or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from typing import Iterator, Sequence

from collie import storage
from collie.config import ConfigError
from collie.config.model_path import resolve_model_path


def check_model_dir(path: str) -> None:
    """A model that is not there is named as the model directory, before the tokenizer (read from
    that directory unless one is given) is looked for. URLs and hub ids are checked where read."""
    resolved = resolve_model_path(path)
    if storage.is_url(resolved):
        return
    local = storage.local_form(resolved)
    if os.path.isfile(local):
        raise ConfigError(f"{path}: a file, not a model directory")
    if not os.path.isdir(local):
        raise FileNotFoundError(f"model directory not found: {path!r}")


def check_destination(path: str, overwrite: bool) -> None:
    """Refuse a destination that already holds files unless `--overwrite` says to replace them."""
    local = storage.local_form(path)
    if not storage.is_url(path) and os.path.exists(local) and not os.path.isdir(local):
        raise ConfigError(f"{path}: exists and is a file, not a directory; give another destination")
    held = sorted(storage.listdir(path))
    if held and not overwrite:
        shown = ", ".join(held[:3]) + (", …" if len(held) > 3 else "")
        raise ConfigError(f"{path}: not empty (holds {shown}); give --overwrite to replace what it holds")


def check_writable_file(path: str, setting: str) -> None:
    """A file the command writes at its end, tried now: a long evaluation does not end in a
    permission error. A probe file is created and removed; `path` itself is not touched."""
    if os.path.isdir(path):
        raise ConfigError(f"{setting}: {path!r} is a directory; give a file name")
    above = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(above):
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise ConfigError(f"{setting}: {path!r} is not writable ({above} is a file, not a directory)")
    probe = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.write-test-{os.getpid()}")
    try:
        os.makedirs(os.path.dirname(probe), exist_ok=True)
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"{setting}: {path!r} is not writable ({e.strerror or e})") from None


@contextlib.contextmanager
def new_directory(path: str, last: Sequence[str] = ("config.json",)) -> Iterator[str]:
    """A local directory to write `path`'s files into; they become `path` only once all are
    written, replacing what it held. A failure leaves `path` as it was and removes the partial
    files. (A URL is uploaded when complete, `last` files last: `storage.staged`.)"""
    if storage.is_url(path):
        with storage.staged(path, last=last) as out:
            yield out
        return
    path = os.path.abspath(storage.local_form(path))
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    # A sibling, so the final rename stays on one file system.
    staging = os.path.join(parent, f".{name}.partial-{uuid.uuid4().hex[:8]}")
    os.mkdir(staging)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = f"{staging}.old"
    if os.path.isdir(path):
        os.rename(path, old)
    os.rename(staging, path)
    shutil.rmtree(old, ignore_errors=True)
