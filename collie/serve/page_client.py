"""What the in-training web pages (Gradio, Dash) send: a completion request to the OpenAI
endpoint, so a page shows exactly what any other client of the endpoint gets."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx


@dataclass
class PageDefaults:
    """The settings a page opens with (CoLLiE's providers take them from a GenerationConfig), and
    whether the model it talks to is being trained."""
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    while_training: bool = True

    def heading(self, model_name: str) -> str:
        return f"{model_name} — answers come from the weights being trained" if self.while_training else model_name


def ask_endpoint(api_url: str, model_name: str, prompt: str, max_tokens: float, temperature: float,
                 top_p: float) -> tuple[str, str]:
    """(the answer, which step's weights gave it) — or the endpoint's error message."""
    body = {"model": model_name, "prompt": prompt, "max_tokens": int(max_tokens),
            "temperature": float(temperature), "top_p": float(top_p)}
    try:
        response = httpx.post(f"{api_url.rstrip('/')}/completions", json=body, timeout=600)
    except httpx.HTTPError as e:
        return f"error: the endpoint did not answer ({e})", ""
    data = response.json()
    if response.status_code != 200:
        return f"error: {data.get('error', {}).get('message', response.text)}", ""
    step = data.get("system_fingerprint", "").removeprefix("collie-step-")
    return data["choices"][0]["text"], f"answered by the weights of step {step}" if step else ""


class QuietRequestsTo(logging.Filter):
    """httpx logs each request it sends at INFO ("HTTP Request: POST …"); under collie's INFO log
    a page's own requests (every prompt, Gradio's start-up checks) would fill the training log.
    Installed on httpx's logger while a page is up, this drops those lines only: requests to
    other addresses, and httpx's warnings, are still logged."""

    def __init__(self, *urls: str) -> None:
        super().__init__()
        self.prefixes = tuple(url.rstrip("/") for url in urls)

    def filter(self, record: logging.LogRecord) -> bool:
        # httpx: logger.info('HTTP Request: %s %s "%s %d %s"', method, url, http_version, status, reason)
        args = record.args if isinstance(record.args, tuple) else ()
        url = str(args[1]) if len(args) > 1 else ""
        local = any(url == prefix or url.startswith(prefix + "/") for prefix in self.prefixes)
        return not (local and record.levelno <= logging.INFO)


def page_urls(api_url: str, host: str, port: int) -> list[str]:
    """The addresses a page's own requests go to: the endpoint, and the page itself under the
    names a web framework calls it by."""
    names = {host, "127.0.0.1", "localhost"} if host in ("0.0.0.0", "::", "") else {host}
    return [api_url, *(f"http://{name}:{port}" for name in sorted(names))]
