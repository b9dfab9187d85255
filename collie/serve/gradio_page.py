"""CoLLiE's in-training web page (the page of its `GradioProvider`): type a prompt while the model trains and see
the current weights answer, with the step they come from. It is a client of the OpenAI endpoint
(`serve.port`), so it shows exactly what any other client gets. Local by default: it binds
127.0.0.1 and never opens a public share link.
"""

from __future__ import annotations

import logging
from typing import Optional

from collie.serve.page_client import PageDefaults, QuietRequestsTo, ask_endpoint, page_urls

log = logging.getLogger("collie")


class GradioPage:
    def __init__(self, api_url: str, model_name: str, port: int = 7860, host: str = "127.0.0.1",
                 defaults: Optional[PageDefaults] = None) -> None:
        self.api_url, self.model_name, self.port, self.host = api_url.rstrip("/"), model_name, port, host
        self.defaults = defaults or PageDefaults()
        self.demo = None
        self.quiet = QuietRequestsTo(*page_urls(self.api_url, host, port))

    def answer(self, prompt: str, max_tokens: float, temperature: float, top_p: float) -> tuple[str, str]:
        return ask_endpoint(self.api_url, self.model_name, prompt, max_tokens, temperature, top_p)

    def build(self):
        import gradio as gr

        with gr.Blocks(title="collie: talk to the model while it trains", analytics_enabled=False) as demo:
            gr.Markdown(f"### {self.defaults.heading(self.model_name)}")
            prompt = gr.Textbox(label="Prompt", lines=4, elem_id="prompt")
            with gr.Row():
                max_tokens = gr.Slider(1, 512, value=self.defaults.max_tokens, step=1, label="max tokens")
                temperature = gr.Slider(0.0, 2.0, value=self.defaults.temperature, step=0.05, label="temperature (0: greedy)")
                top_p = gr.Slider(0.05, 1.0, value=self.defaults.top_p, step=0.05, label="top p")
            button = gr.Button("Generate", variant="primary", elem_id="generate")
            output = gr.Textbox(label="Answer", lines=6, elem_id="answer")
            step = gr.Markdown(elem_id="step")
            button.click(self.answer, [prompt, max_tokens, temperature, top_p], [output, step])
        return demo

    def start(self) -> None:
        self.demo = self.build()
        logging.getLogger("httpx").addFilter(self.quiet)
        self.demo.queue()
        self.demo.launch(server_name=self.host, server_port=self.port, share=False, prevent_thread_lock=True,
                         quiet=True, show_error=True)
        log.info("Gradio page at http://%s:%d", self.host, self.port)

    def stop(self) -> None:
        if self.demo is not None:
            self.demo.close()
            self.demo = None
        logging.getLogger("httpx").removeFilter(self.quiet)

    @property
    def url(self) -> Optional[str]:
        return f"http://{self.host}:{self.port}" if self.demo is not None else None
