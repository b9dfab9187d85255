"""CoLLiE's `collie.controller.server`: a model and a data provider, served (`collie.serve.providers`)."""

from collie.serve.providers import Server

__all__ = ["Server"]
