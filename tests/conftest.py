import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "assets")
sys.path.insert(0, os.path.join(ROOT, "tests"))
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def bundled_tokenizer():
    from transformers import AutoTokenizer

    from collie.init_model import bundled_tokenizer_path

    return AutoTokenizer.from_pretrained(bundled_tokenizer_path())


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible HTTP server (moto) on 127.0.0.1; processes the tests start reach it
    through the standard AWS_* variables, as they would a cluster's object store."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in _S3_ENV}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    yield f"http://127.0.0.1:{port}"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


_S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")


@pytest.fixture
def s3_bucket(s3_server, tmp_path, monkeypatch, request):
    """An empty bucket of its own (`s3://NAME`) and a download cache under tmp_path."""
    import fsspec

    monkeypatch.setenv("COLLIE_CACHE_DIR", str(tmp_path / "remote-cache"))
    name = "collie-" + "".join(c for c in request.node.name.lower() if c.isalnum())[:40]
    fs = fsspec.filesystem("s3")
    fs.mkdir(name)
    return f"s3://{name}"
