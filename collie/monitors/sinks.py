"""Where monitor rows go: a rich progress bar, metrics.csv, TensorBoard (and loss.png, W&B in
their own modules). Rank 0 only."""

from __future__ import annotations

import csv
import os
from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


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
            with open(path, newline="") as f:
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
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, self.columns).writerow(row)

    def truncate_after(self, step: int) -> None:
        """Drop rows past `step` (a resumed run redoes them)."""
        self.rows = [row for row in self.rows if int(row["step"]) <= step]
        self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)


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
               "mem_run_peak_gib"}
_SHOWN = ("loss", "lr", "tgs", "mfu", "mem_peak_gib")


def format_row(row: dict) -> str:
    parts = []
    for key, value in row.items():
        if key in ("step", "epoch", "tokens", "step_time_s") or (key in _TRAIN_KEYS and key not in _SHOWN):
            continue
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)
