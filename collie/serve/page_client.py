"""What the in-training web pages (Gradio, Dash) send: a completion request to the OpenAI
endpoint, so a page shows exactly what any other client of the endpoint gets."""

from __future__ import annotations

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
