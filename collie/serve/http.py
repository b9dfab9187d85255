"""The HTTP side shared by `collie serve` and serving while training: uvicorn set up one way."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from fastapi import FastAPI


def http_server(app: FastAPI, host: str, port: int) -> uvicorn.Server:
    """uvicorn for collie's endpoints: warnings only, no access log (prompts are not logged), and
    no logging set-up of its own (`log_config=None`): uvicorn's would reconfigure the host
    program's logging and bind its handlers to whatever sys.stderr is at that moment."""
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                         log_config=None))


def check_port(port: int, setting: str) -> None:
    if not 1 <= port <= 65535:
        raise ValueError(f"{setting}: a port is a number from 1 to 65535, got {port}")


def listening_socket(host: str, port: int, setting: str) -> socket.socket:
    """The socket the server will listen on, bound now: a taken port or an unknown host is one line
    naming `setting` before anything says "serving" (uvicorn would log three tracebacks)."""
    check_port(port, setting)
    try:
        address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise ValueError(f"{setting}: cannot listen on {host}:{port} (the host: {e.strerror})") from None
    family, kind, proto, _, where = address
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a port in TIME_WAIT is free
    try:
        sock.bind(where)
    except OSError as e:
        sock.close()
        raise ValueError(f"{setting}: cannot listen on {host}:{port} ({e.strerror or e})") from None
    return sock


def start_in_background(server: uvicorn.Server, setting: str, timeout_s: float = 30.0) -> threading.Thread:
    """Run `server` in a daemon thread and return once it listens; a server that cannot start
    (the port is taken) is one line naming `setting`."""
    sock = listening_socket(server.config.host, server.config.port, setting)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="collie-serve-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            config = server.config
            raise RuntimeError(f"{setting}: could not listen on {config.host}:{config.port}")
        time.sleep(0.02)
    return thread
