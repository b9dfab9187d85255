"""Dynamic loss scaling for fp16 training with the in-backward optimizers.

fp16 gradients underflow to zero for small values, so the loss is multiplied by a
large scale before backward and the gradients are divided by it afterwards. When
the scale is too large the gradients overflow to inf/nan: that step is skipped and
the scale shrinks; after ``scale_window`` clean steps it grows again. The
semantics (including the ``delayed_shift`` hysteresis) follow the scaler shipped
with ``lomo-optim``/DeepSpeed so that the same arguments behave the same way.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

_STATE_KEYS = (
    "cur_scale",
    "cur_iter",
    "last_overflow_iter",
    "cur_hysteresis",
    "scale_factor",
    "scale_window",
    "min_scale",
    "delayed_shift",
    "consecutive_hysteresis",
    "raise_error_at_min_scale",
)


class DynamicLossScaler:
    """Loss scale that halves on overflow and doubles after ``scale_window`` clean steps.

    Args:
        init_scale: Starting scale. The large default (2**32) overflows at first and
            is walked down quickly; that costs a few skipped steps but finds the
            largest usable scale without tuning.
        scale_factor: Multiplier used to shrink/grow the scale.
        scale_window: Number of consecutive clean steps before the scale grows.
        min_scale: Lower bound of the scale.
        delayed_shift: Number of overflows tolerated (hysteresis) before shrinking.
        consecutive_hysteresis: Restore the hysteresis after every clean step
            instead of only when the scale grows.
        raise_error_at_min_scale: Raise instead of continuing when an overflow
            happens while already at ``min_scale`` (training has diverged).
        dtype: Dtype the scale protects; only used in log messages.
    """

    def __init__(
        self,
        init_scale: float = 2**32,
        scale_factor: float = 2.0,
        scale_window: int = 1000,
        min_scale: float = 1,
        delayed_shift: int = 1,
        consecutive_hysteresis: bool = False,
        raise_error_at_min_scale: bool = True,
        dtype: torch.dtype = torch.half,
    ) -> None:
        self.cur_scale = init_scale
        self.cur_iter = 0
        self.last_overflow_iter = -1
        self.scale_factor = scale_factor
        self.scale_window = scale_window
        self.min_scale = min_scale
        self.delayed_shift = delayed_shift
        self.cur_hysteresis = delayed_shift
        self.consecutive_hysteresis = consecutive_hysteresis
        self.raise_error_at_min_scale = raise_error_at_min_scale
        self.dtype = dtype

    @property
    def loss_scale(self) -> float:
        """The factor the loss is multiplied by before backward."""
        return self.cur_scale

    def update_scale(self, overflow: bool) -> None:
        """Record the outcome of one step and adapt the scale.

        Args:
            overflow: Whether that step's gradients contained inf/nan.

        Raises:
            RuntimeError: On overflow at ``min_scale`` with ``raise_error_at_min_scale``.
        """
        if overflow:
            if self.delayed_shift == 1 or self.cur_hysteresis == 1:
                if self.cur_scale == self.min_scale and self.raise_error_at_min_scale:
                    raise RuntimeError(
                        "Loss scale is already at its minimum and the gradients still overflow; "
                        "training has diverged."
                    )
                next_scale = max(self.cur_scale / self.scale_factor, self.min_scale)
                logger.warning(
                    "Gradient overflow, skipping step; %s loss scale %s -> %s",
                    self.dtype, self.cur_scale, next_scale,
                )
                self.cur_scale = next_scale
            else:
                logger.warning(
                    "Gradient overflow, skipping step; hysteresis %d -> %d",
                    self.cur_hysteresis, self.cur_hysteresis - 1,
                )
                self.cur_hysteresis -= 1
            self.last_overflow_iter = self.cur_iter
        else:
            if self.consecutive_hysteresis:
                self.cur_hysteresis = self.delayed_shift
            if (self.cur_iter - self.last_overflow_iter) % self.scale_window == 0:
                if not self.consecutive_hysteresis:
                    self.cur_hysteresis = self.delayed_shift
                self.cur_scale *= self.scale_factor
        self.cur_iter += 1

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue with the same scale schedule after a resume."""
        return {key: getattr(self, key) for key in _STATE_KEYS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        for key in _STATE_KEYS:
            setattr(self, key, state[key])
