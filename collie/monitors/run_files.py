"""Where metrics.csv, TensorBoard events and loss.png are written when `output_dir` is an object
store: files that grow row by row cannot be appended to in one, so the sinks write a local
mirror of the run and this sink (the last one) uploads it after each checkpoint and at the end.
A resumed run first fetches the metrics.csv it continues."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

from collie import storage
from collie.monitors.sinks import Sink

_CONTINUED = ("metrics.csv",)


class RunFiles(Sink):
    def __init__(self, output_dir: str, resumed: bool) -> None:
        self.output_dir = output_dir
        self.remote = storage.is_url(output_dir)
        if not self.remote:
            self.local = storage.local_form(output_dir)
            os.makedirs(self.local, exist_ok=True)
            return
        digest = hashlib.sha256(output_dir.encode()).hexdigest()[:16]
        self.local = tempfile.mkdtemp(prefix=f"collie-run-{digest}-")
        for name in _CONTINUED if resumed else ():
            remote = f"{output_dir.rstrip('/')}/{name}"
            if storage.isfile(remote):
                with storage.open_file(remote) as src, open(os.path.join(self.local, name), "wb") as dst:
                    dst.write(src.read())

    def write(self, row: dict) -> None:
        pass

    def checkpointed(self) -> None:
        storage.upload_dir(self.local, self.output_dir)

    def close(self) -> None:
        storage.upload_dir(self.local, self.output_dir)
        shutil.rmtree(self.local, ignore_errors=True)
