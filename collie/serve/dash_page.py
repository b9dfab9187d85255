"""The in-training web page of CoLLiE's `DashProvider`, in Dash: the same prompt box, settings and
answer as the Gradio page, sent to the OpenAI endpoint. Local by default (127.0.0.1)."""

from __future__ import annotations

import logging
import threading
from typing import Optional

from collie.config import ConfigError
from collie.serve.page_client import PageDefaults, QuietRequestsTo, ask_endpoint, page_urls

log = logging.getLogger("collie")


class DashPage:
    def __init__(self, api_url: str, model_name: str, port: int = 7878, host: str = "127.0.0.1",
                 defaults: Optional[PageDefaults] = None) -> None:
        self.api_url, self.model_name, self.port, self.host = api_url.rstrip("/"), model_name, port, host
        self.defaults = defaults or PageDefaults()
        self._server = None
        self._thread: Optional[threading.Thread] = None
        self.quiet = QuietRequestsTo(*page_urls(self.api_url, host, port))

    def build(self):
        try:  # optional: only this page needs Dash
            import dash
            from dash import Input, Output, State, dcc, html
        except ImportError:
            raise ConfigError("DashProvider: needs the `dash` package (pip install dash); GradioProvider needs "
                              "gradio instead") from None
        app = dash.Dash(__name__, title="collie: talk to the model while it trains")
        d = self.defaults
        app.layout = html.Div([
            html.H3(d.heading(self.model_name)),
            dcc.Textarea(id="prompt", style={"width": "100%", "height": 100}),
            html.Label("max tokens"), dcc.Input(id="max_tokens", type="number", value=d.max_tokens, min=1),
            html.Label("temperature (0: greedy)"), dcc.Input(id="temperature", type="number", value=d.temperature, min=0),
            html.Label("top p"), dcc.Input(id="top_p", type="number", value=d.top_p, min=0.05, max=1.0),
            html.Button("Generate", id="generate"),
            html.Pre(id="answer"), html.Div(id="step"),
        ])

        @app.callback(Output("answer", "children"), Output("step", "children"), Input("generate", "n_clicks"),
                      State("prompt", "value"), State("max_tokens", "value"), State("temperature", "value"),
                      State("top_p", "value"), prevent_initial_call=True)
        def generate(_clicks, prompt, max_tokens, temperature, top_p):
            return ask_endpoint(self.api_url, self.model_name, prompt or "", max_tokens or d.max_tokens,
                                temperature or 0.0, top_p or 1.0)

        return app

    def start(self) -> None:
        app = self.build()
        from werkzeug.serving import make_server  # Dash's own server library: present once build() found Dash

        self._server = make_server(self.host, self.port, app.server, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name="dash-page", daemon=True)
        self._thread.start()
        logging.getLogger("httpx").addFilter(self.quiet)
        log.info("Dash page at http://%s:%d", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._thread.join(timeout=30)
            self._server = None
        logging.getLogger("httpx").removeFilter(self.quiet)

    @property
    def url(self) -> Optional[str]:
        return f"http://{self.host}:{self.port}" if self._server is not None else None
