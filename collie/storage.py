"""Paths that may be object-store URLs: `output_dir`, model sources and export destinations
accept any fsspec URL (`s3://bucket/run`, `gs://…`, `file://…`) as well as local paths.

fsspec (with `s3fs`, `gcsfs`, … for the protocol) does the talking; credentials and endpoints
come from the usual places (`AWS_*` variables, `AWS_ENDPOINT_URL` for an S3-compatible server,
or `FSSPEC_S3_*`). Object stores have no atomic rename, so a remote directory is complete when
its marker object (written last, one PUT) says so; readers that need a whole directory (an HF
model, a tokenizer) get a local copy, cached by the listing they saw.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from typing import IO, Iterator, Sequence

_LOCAL_PROTOCOLS = ("file://", "local://")


def is_url(path: str) -> bool:
    """An object-store URL (not a local path, not a `file://` URL)."""
    return "://" in str(path) and not str(path).startswith(_LOCAL_PROTOCOLS)


def local_form(path: str) -> str:
    """`file:///x` is the local path `/x`; anything else is returned as it is."""
    for prefix in _LOCAL_PROTOCOLS:
        if str(path).startswith(prefix):
            return str(path)[len(prefix):]
    return path


def filesystem(url: str):
    """(fsspec file system, path inside it) for a URL."""
    import fsspec  # a dependency of datasets

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        # A bad path, not a broken installation: one line naming the URL and what to install.
        protocol = url.split("://", 1)[0]
        raise ValueError(f"{url}: no fsspec file system for {protocol}:// ({str(e).splitlines()[0]}); install "
                         "its package (s3fs for s3://, gcsfs for gs://)") from None


def isfile(path: str) -> bool:
    if not is_url(path):
        return os.path.isfile(local_form(path))
    fs, inner = filesystem(path)
    return fs.isfile(inner)


def isdir(path: str) -> bool:
    if not is_url(path):
        return os.path.isdir(local_form(path))
    fs, inner = filesystem(path)
    return fs.isdir(inner)


def exists(path: str) -> bool:
    if not is_url(path):
        return os.path.exists(local_form(path))
    fs, inner = filesystem(path)
    return fs.exists(inner)


def listdir(path: str) -> list[str]:
    """Names directly under `path` (empty if it does not exist)."""
    if not is_url(path):
        path = local_form(path)
        return os.listdir(path) if os.path.isdir(path) else []
    fs, inner = filesystem(path)
    if not fs.isdir(inner):
        return []
    fs.invalidate_cache(inner)
    return [os.path.basename(entry.rstrip("/")) for entry in fs.ls(inner, detail=False)]


def open_file(path: str, mode: str = "rb") -> IO:
    if not is_url(path):
        return open(local_form(path), mode)
    fs, inner = filesystem(path)
    return fs.open(inner, mode)


def read_text(path: str) -> str:
    with open_file(path, "r") as f:
        return f.read()


def write_text(path: str, text: str) -> None:
    """Replace a small file whole: locally through a temporary name and a rename, in an object
    store by one PUT (readers see the old or the new object, never a part)."""
    if is_url(path):
        fs, inner = filesystem(path)
        fs.pipe_file(inner, text.encode())
        return
    path = local_form(path)
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def makedirs(path: str) -> None:
    """Object stores have no directories: a prefix exists once an object is under it."""
    if not is_url(path):
        os.makedirs(local_form(path), exist_ok=True)


def remove_file(path: str) -> None:
    if not is_url(path):
        os.remove(local_form(path))
        return
    fs, inner = filesystem(path)
    fs.rm_file(inner)


def remove_tree(path: str) -> None:
    """Remove a directory (or prefix) and everything under it; no error if it is absent."""
    if not is_url(path):
        shutil.rmtree(local_form(path), ignore_errors=True)
        return
    fs, inner = filesystem(path)
    if fs.exists(inner):
        fs.rm(inner, recursive=True)
    fs.invalidate_cache(inner)


def upload_dir(local_dir: str, url: str, last: Sequence[str] = ()) -> None:
    """Copy a local directory's files under `url`; the files named in `last` go last, so a
    reader that waits for them (an export's config.json) never sees a partial directory."""
    fs, inner = filesystem(url)
    files = sorted(os.path.relpath(os.path.join(root, name), local_dir)
                   for root, _, names in os.walk(local_dir) for name in names)
    files.sort(key=lambda name: name in last)
    for name in files:
        fs.put_file(os.path.join(local_dir, name), f"{inner.rstrip('/')}/{name}")
    fs.invalidate_cache(inner)


@contextlib.contextmanager
def staged(path: str, upload: bool = True, last: Sequence[str] = ("config.json",),
           replace: bool = True) -> Iterator[str]:
    """A local directory to write `path`'s files into: `path` itself when it is local; for a URL a
    temporary directory uploaded on success (by the processes with `upload`), `last` files last.
    `replace` first removes what `path` held (not when several processes add files to it)."""
    if not is_url(path):
        yield local_form(path)
        return
    local = tempfile.mkdtemp(prefix="collie-upload-")
    try:
        yield local
        if upload:
            if replace:
                remove_tree(path)  # what an earlier write left there is not part of this one
            upload_dir(local, path, last)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def local_copy(path: str) -> str:
    """A local directory with `path`'s files: the path itself when local, else a download kept in
    the cache (`COLLIE_CACHE_DIR`, default ~/.cache/collie/remote) and reused while the remote
    listing (names, sizes, versions) is unchanged."""
    if not is_url(path):
        return local_form(path)
    fs, inner = filesystem(path)
    fs.invalidate_cache(inner)
    if not fs.isdir(inner):
        raise FileNotFoundError(f"{path}: no such directory in the object store")
    listing = fs.find(inner, detail=True)
    signature = json.dumps([path] + sorted(
        (name, info.get("size"), str(info.get("ETag") or info.get("etag") or info.get("mtime") or ""))
        for name, info in listing.items()))
    cache = os.environ.get("COLLIE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "collie", "remote")
    target = os.path.join(cache, hashlib.sha256(signature.encode()).hexdigest()[:24])
    if os.path.isdir(target):
        return target
    os.makedirs(cache, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=os.path.basename(target) + ".part-", dir=cache)
    root = inner.rstrip("/")
    for name in listing:
        relative = os.path.relpath(name, root)
        if relative.startswith("..") or os.path.isabs(relative):
            raise ValueError(f"{path}: the object {name!r} lies outside the directory; refusing to copy it")
        local = os.path.join(partial, relative)
        os.makedirs(os.path.dirname(local), exist_ok=True)
        fs.get_file(name, local)
    try:
        os.rename(partial, target)  # processes on one node download together: the first one wins
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def move_into(staging: str, path: str) -> None:
    """Move a complete export's files into `path` (made if needed), replacing files of the same
    name; what else `path` holds stays (it may be the run's own directory)."""
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(staging):
        target = os.path.join(path, name)
        if os.path.isdir(target) and not os.path.islink(target):
            remove_tree(target)
        os.replace(os.path.join(staging, name), target)
    os.rmdir(staging)

