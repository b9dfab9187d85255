"""CoLLiE's `collie.models.moss_moon.model`: moss-moon-003 is the MOSS family's model."""

from collie.models.moss.model import MossForCausalLM as Moss003MoonForCausalLM

__all__ = ["Moss003MoonForCausalLM"]
