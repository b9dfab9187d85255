"""Write failures surface as the OSError they are and leave no temporary file behind."""

import errno
import os

import pytest
import torch
from safetensors import SafetensorError

from collie import storage
from collie.models import hf_io


def test_a_full_disk_in_safetensors_is_an_oserror_naming_the_file(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                              "\"No space left on device\" }) (os error 28)")

    monkeypatch.setattr(hf_io, "save_file", full)
    with pytest.raises(OSError) as failed:
        hf_io.save_hf_tensors(str(tmp_path), [("w", torch.zeros(2))])
    assert failed.value.errno == errno.ENOSPC and failed.value.filename.startswith(str(tmp_path))


def test_write_text_that_fails_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "latest"
    target.mkdir()  # a directory where the file should go: the final rename fails
    (target / "inside").write_text("x")
    with pytest.raises(OSError):
        storage.write_text(str(target), "step-4")
    assert sorted(os.listdir(tmp_path)) == ["latest"]
