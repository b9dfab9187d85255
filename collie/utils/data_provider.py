"""CoLLiE's `collie.utils.data_provider`: pages that answer from the weights being trained
(`collie.serve.providers`)."""

from collie.serve.providers import BaseProvider, DashProvider, GradioProvider
from collie.utils.refused import refused_class

_GenerationStreamer = refused_class(
    "_GenerationStreamer", "CoLLiE streamed tokens into a provider's queue; collie's pages read the OpenAI "
    "endpoint (stream=true there)")

__all__ = ["BaseProvider", "GradioProvider", "DashProvider", "_GenerationStreamer"]
