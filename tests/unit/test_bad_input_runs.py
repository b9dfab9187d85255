"""The bad-input table for training runs and their files: a disk that fills up during a
checkpoint (synchronous and background) leaves no partial file and names what it could not
write; a resumed run says so first; a finished run run again does nothing; no warning noise."""

import builtins
import errno
import io
import logging
import os
import threading
import warnings

import pytest

from collie.cli import main
from collie.monitors import sinks
from collie.monitors.sinks import CSVSink

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICKSTART = os.path.join(ROOT, "examples", "quickstart.yaml")
TRAIN_FILE = os.path.join(ROOT, "examples", "data", "collie_qa.jsonl")


def _train(out, *extra) -> int:
    return main(["train", QUICKSTART, f"output_dir={out}", f"data.train_file={TRAIN_FILE}", "data.eval_file=null",
                 "checkpoint_every_n_steps=2", "logging=[csv,plot]", *extra])


def _files(out) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), out) for d, _, names in os.walk(out) for f in names)


class _FullDisk:
    """The file system under `root` fills up once `room` more bytes have been written after the
    first write into a file whose path holds `trigger`: a write that does not fit writes what
    fits and fails with ENOSPC, as the OS does, and so does every later write there."""

    def __init__(self, monkeypatch, root: str, trigger: str, room: int) -> None:
        self.root, self.trigger, self.room = str(root), trigger, room
        self.counting = False
        self.lock = threading.Lock()  # a background checkpoint writes from its own thread
        real_open = io.open

        def budgeted_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            path = os.path.abspath(os.fspath(file)) if isinstance(file, (str, os.PathLike)) else ""
            if path.startswith(self.root) and any(m in mode for m in "wax+"):
                self.counting |= self.trigger in path
                return _Budgeted(f, self)
            return f

        # pathlib (DCP's writer) calls io.open; the rest builtins.open (the same function).
        monkeypatch.setattr(io, "open", budgeted_open)
        monkeypatch.setattr(builtins, "open", budgeted_open)

    def take(self, wanted: int) -> int:
        with self.lock:
            if not self.counting:
                return wanted
            granted = max(0, min(wanted, self.room))
            self.room -= granted
            return granted


class _Budgeted:
    def __init__(self, file, disk: _FullDisk) -> None:
        self._file, self._disk = file, disk

    def write(self, data):
        size = len(data)
        granted = self._disk.take(size)
        if granted < size:
            self._file.write(data[:granted])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()

    def __iter__(self):
        return iter(self._file)


@pytest.mark.parametrize("background", [False, True], ids=["sync", "checkpoint_async"])
def test_full_disk_during_a_checkpoint_leaves_no_partial_file(tmp_path, monkeypatch, capsys, background):
    out = tmp_path / "run"
    _FullDisk(monkeypatch, out, trigger=os.path.join("checkpoints", "step-4.tmp"), room=1 << 20)
    code = _train(out, "max_steps=6", f"checkpoint_async={str(background).lower()}")
    err = capsys.readouterr().err.strip()
    assert code in (1, 2) and err.count("\n") == 0 and err.startswith("collie: error: ")
    if background:
        # The plot, drawn while the checkpoint was written in the background, failed first.
        assert err.endswith(f"{out}/loss.png: No space left on device")
    else:
        assert code == 2 and f"{out}/checkpoints/step-4: the checkpoint could not be written (No space left on " \
                               "device); the partial one was removed" in err
    files = _files(out)
    assert not [f for f in files if ".tmp" in f or "step-4" in f], files
    assert "loss.png" in files and not any(f.startswith("final") for f in files)
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-2"
    assert "checkpoints/step-2/.metadata" in files
    monkeypatch.undo()
    # The disk has room again: the same command resumes from the whole checkpoint.
    assert _train(out, "max_steps=6") == 0
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-6"


def test_a_metrics_row_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = str(tmp_path / "metrics.csv")
    csv_sink = CSVSink(path)
    csv_sink.write({"step": 1, "loss": 2.0})
    before = open(path).read()
    monkeypatch.setattr(os, "write", lambda fd, data: os.ftruncate(fd, os.fstat(fd).st_size + 3) or 3)
    with pytest.raises(OSError, match="No space left on device") as raised:
        csv_sink.write({"step": 2, "loss": 1.0})
    assert raised.value.filename == path
    monkeypatch.undo()
    assert open(path).read() == before


def test_a_failed_rewrite_keeps_the_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "loss.png")
    open(path, "w").write("old")

    def full(tmp):
        open(tmp, "w").write("ha")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError) as raised:
        sinks.replace_whole(path, full, suffix=".tmp.png")
    assert raised.value.filename == path and os.listdir(tmp_path) == ["loss.png"]
    assert open(path).read() == "old"


def test_export_on_a_full_disk_leaves_no_partial_model(tmp_path, monkeypatch, capsys):
    import collie.models.hf_io as hf_io

    real_save = hf_io.save_file

    def full(tensors, filename, **kwargs):
        if "final" not in filename:  # the seed checkpoint (init/) fits
            return real_save(tensors, filename, **kwargs)
        open(filename, "wb").write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(hf_io, "save_file", full)
    out = tmp_path / "run"
    assert _train(out, "max_steps=1", "checkpoint_every_n_steps=0") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"collie: error: {out}/final/") and err.endswith(": No space left on device")
    assert not [f for f in _files(out) if f.startswith("final")]


def test_resumed_and_finished_runs_say_so_first(tmp_path, caplog):
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _train(out, "max_steps=2") == 0
    # DCP's "no process group" warning at every checkpoint of a one-process run is gone.
    assert not [w for w in caught if "torch.distributed is disabled" in str(w.message)]

    def stamp(f):
        st = os.stat(out / f)
        return st.st_ino, st.st_mtime_ns, st.st_size

    written = {f: stamp(f) for f in _files(out) if f.startswith(("final", "checkpoints"))}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="collie"):
        assert _train(out, "max_steps=2") == 0
    assert caplog.records[0].getMessage() == \
        f"{out}/checkpoints/step-2 is at step 2 of 2: the run is complete; nothing to do"
    # Nothing rewritten: neither the checkpoint nor final/.
    assert {f: stamp(f) for f in _files(out) if f.startswith(("final", "checkpoints"))} == written

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="collie"):
        assert _train(out, "max_steps=3", "checkpoint_every_n_steps=3") == 0
    assert caplog.records[0].getMessage() == f"resuming from {out}/checkpoints/step-2 (step 2 of 3)"
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-3"


def test_bitsandbytes_cpu_kernel_notice_is_dropped_and_nothing_else():
    import collie.peft.quantize  # noqa: F401  (installs the filter, as the CLI's import of it does)

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")

    def record(msg: str) -> logging.LogRecord:
        return logger.makeRecord(logger.name, logging.WARNING, __file__, 0, msg, ("x",), None)

    assert not logger.filter(record("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make "
                                    "sure you already `pip install kernels` and the kernels >= 0.11.1"))
    assert logger.filter(record("some other bitsandbytes warning: %s"))
