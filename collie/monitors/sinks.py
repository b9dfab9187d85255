"""Where monitor rows go: a rich progress bar, metrics.csv, TensorBoard (and loss.png, W&B in
their own modules). Rank 0 only."""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import os
from typing import Callable, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from collie.preference import REWARD_COLUMNS


def replace_whole(path: str, write: Callable[[str], None], suffix: str = ".tmp") -> None:
    """Write `path` through `write(temporary name)` and a rename. A write that fails (a full disk)
    removes the temporary file and raises an OSError naming `path`; the previous file stays whole."""
    tmp = path + suffix
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise OSError(e.errno, e.strerror or str(e), path) from e


def append_whole(path: str, text: str) -> None:
    """Append `text` to `path` all or nothing: a write that fails or stops short (a full disk) is
    cut back off, and an OSError names `path`; a reader never sees half a row."""
    data = text.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as e:
            os.ftruncate(fd, size)
            raise OSError(e.errno, e.strerror or str(e), path) from e
    finally:
        os.close(fd)


class Sink:
    def write(self, row: dict) -> None:
        raise NotImplementedError

    def message(self, text: str) -> None:
        pass

    def checkpointed(self) -> None:
        """A checkpoint was just written."""

    def close(self) -> None:
        pass


class CSVSink(Sink):
    """One row per optimizer step; a column first seen later (an eval metric) widens the file."""

    def __init__(self, path: str, resume: bool = False) -> None:
        self.path = path
        self.columns: list[str] = []
        self.rows: list[dict] = []
        if resume and os.path.isfile(path):
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or [])
                self.rows = list(reader)

    def write(self, row: dict) -> None:
        self.rows.append(row)
        new = [key for key in row if key not in self.columns]
        if new:
            self.columns += new
            self._rewrite()
        else:
            line = io.StringIO(newline="")
            csv.DictWriter(line, self.columns).writerow(row)
            append_whole(self.path, line.getvalue())

    def truncate_after(self, step: int) -> None:
        """Drop rows past `step` (a resumed run redoes them)."""
        self.rows = [row for row in self.rows if int(row["step"]) <= step]
        self._rewrite()

    def _rewrite(self) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, self.columns)
                writer.writeheader()
                writer.writerows(self.rows)

        replace_whole(self.path, write)


class TensorBoardSink(Sink):
    def __init__(self, log_dir: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=log_dir)

    def write(self, row: dict) -> None:
        step = int(row["step"])
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step)

    def checkpointed(self) -> None:
        self.writer.flush()  # the events so far belong with the checkpoint (and are uploaded with it)

    def close(self) -> None:
        self.writer.close()


class ConsoleSink(Sink):
    """A live progress bar with loss and TGS on a terminal; plain lines elsewhere (CI logs)."""

    def __init__(self, total_steps: int, start_step: int = 0, every: int = 1,
                 console: Optional[Console] = None) -> None:
        self.console = console or Console()
        self.every = max(1, every)
        self.progress: Optional[Progress] = None
        if self.console.is_terminal:
            self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), TextColumn("{task.description}"),
                                     console=self.console)
            self.task = self.progress.add_task("", total=total_steps, completed=start_step)
            self.progress.start()

    def write(self, row: dict) -> None:
        text = format_row(row)
        if self.progress is not None:
            self.progress.update(self.task, completed=int(row["step"]), description=text)
            if any(key not in _TRAIN_KEYS for key in row):
                self.progress.console.print(f"step {row['step']}: {text}")
        elif int(row["step"]) % self.every == 0 or any(key not in _TRAIN_KEYS for key in row):
            self.console.print(f"step {row['step']}: {text}", highlight=False)

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


_TRAIN_KEYS = {"step", "epoch", "loss", "lr", "tokens", "step_time_s", "tgs", "mfu", "mem_peak_gib",
               "mem_run_peak_gib", *REWARD_COLUMNS}
_SHOWN = ("loss", "lr", "tgs", "mfu", "mem_peak_gib", "reward_margin", "reward_accuracy")


def format_row(row: dict) -> str:
    parts = []
    for key, value in row.items():
        if key in ("step", "epoch", "tokens", "step_time_s") or (key in _TRAIN_KEYS and key not in _SHOWN):
            continue
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)
