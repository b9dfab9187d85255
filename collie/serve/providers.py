"""CoLLiE's data providers: a web page where people type prompts while the model trains and read
what the weights of the latest step answer (`Trainer(data_provider=GradioProvider(tokenizer))`).

In collie a provider is a page over the serve-while-training OpenAI endpoint
(`collie.serve.during_training`): requests are decoded between two steps under any layout. The
endpoint listens on `serve.port` when it is set, else on a free local port.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Any, Callable, Optional

import torch

from collie.config import ConfigError
from collie.config.sections import ServeSection
from collie.launch_env import launched_processes
from collie.models.registry import spec_of
from collie.serve.app import ServedModel
from collie.serve.dash_page import DashPage
from collie.serve.during_training import ServeCallback
from collie.serve.gradio_page import GradioPage
from collie.serve.limits import context_length, model_name
from collie.serve.page_client import PageDefaults
from collie.serve.standalone import serve_until_stopped

log = logging.getLogger("collie")


class BaseProvider:
    """CoLLiE's provider base. `generation_config` (a transformers GenerationConfig or a dict)
    sets what the page opens with: max_new_tokens, temperature (greedy unless do_sample), top_p."""

    page_class: Optional[type] = None

    def __init__(self, stream: bool = False, generation_config: Any = None) -> None:
        self.stream = stream
        self.generation_config = generation_config
        self.tokenizer = None
        self.port: Optional[int] = None

    def page_defaults(self) -> PageDefaults:
        config = self.generation_config
        if config is None:
            return PageDefaults()
        get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
        sampled = bool(get("do_sample", False))
        return PageDefaults(max_tokens=int(get("max_new_tokens", None) or 64),
                            temperature=float(get("temperature", 1.0) or 0.0) if sampled else 0.0,
                            top_p=float(get("top_p", 1.0) or 1.0) if sampled else 1.0)

    def page(self, host: str, while_training: bool = True) -> Callable[[str, str], object]:
        """What makes this provider's page from the endpoint's URL and the model's name."""
        if self.page_class is None:
            raise ConfigError(f"{type(self).__name__}: collie answers prompts through its OpenAI endpoint "
                              "(serve.port); send them there with any OpenAI client, or use GradioProvider / "
                              "DashProvider for a page")
        if self.stream:
            log.info("%s: stream=True — the page shows each answer when it is complete", type(self).__name__)
        page_class, port, defaults = self.page_class, self.port, self.page_defaults()
        defaults.while_training = while_training
        return lambda api_url, name: page_class(api_url, name, port=port, host=host, defaults=defaults)

    def serve_callback(self, serve: ServeSection) -> ServeCallback:
        """The callback that serves the endpoint during training and opens this provider's page."""
        page = self.page(serve.host)
        port = serve.port if serve.port is not None else free_port(serve.host)
        return ServeCallback(port, serve.host, serve.max_batch_size, serve.max_queue, page=page)


class GradioProvider(BaseProvider):
    page_class = GradioPage

    def __init__(self, tokenizer: Any = None, port: int = 7878, stream: bool = False,
                 generation_config: Any = None) -> None:
        super().__init__(stream, generation_config)
        self.tokenizer, self.port = tokenizer, port


class DashProvider(GradioProvider):
    page_class = DashPage


class Server:
    """CoLLiE's Server: a model and a provider. In a Trainer (`Trainer(server=…)`) it serves while
    training; `run()` serves the model alone, on this process, until SIGTERM or Ctrl-C."""

    def __init__(self, model: torch.nn.Module, data_provider: BaseProvider, host: str = "127.0.0.1",
                 port: Optional[int] = None) -> None:
        self.model, self.data_provider, self.host, self.port = model, data_provider, host, port

    def run(self) -> None:
        if launched_processes() > 1:
            raise ConfigError("Server.run: serves one process; serve under a layout with "
                              "`torchrun … -m collie serve MODEL tp_size=…`")
        tokenizer = self.data_provider.tokenizer
        if tokenizer is None:
            raise ConfigError(f"Server: {type(self.data_provider).__name__} needs the tokenizer (its first argument)")
        dims = spec_of(self.model).dims(self.model.config)
        name = model_name(getattr(self.model, "source", None) or "model", None)
        served = ServedModel(name, tokenizer, context_length(dims, tokenizer, self.model))
        serve_until_stopped(self.model, tokenizer, contextlib.nullcontext, served, self.host,
                            self.port or free_port(self.host), page=self.data_provider.page(self.host, while_training=False))


def free_port(host: str) -> int:
    """A port nobody listens on now, for the endpoint the page talks to."""
    with socket.socket() as s:
        s.bind((host if host not in ("0.0.0.0", "::", "") else "127.0.0.1", 0))
        return s.getsockname()[1]
