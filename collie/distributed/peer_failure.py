"""A collective that failed because a peer rank died or stalled, as one line naming the step."""

from __future__ import annotations

import re
from typing import Optional


class PeerFailure(RuntimeError):
    """A rank died or stalled inside a collective; torchrun --max-restarts restarts the job."""


_SIGNS = {"timed out": "timed out waiting for a peer", "timeout": "timed out waiting for a peer",
          "connection reset": "lost its connection to a peer", "connection closed": "lost its connection to a peer",
          "connection refused": "could not reach a peer", "broken pipe": "lost its connection to a peer"}


def as_peer_failure(error: BaseException, step: int, timeout_s: Optional[float]) -> Optional[PeerFailure]:
    """`error` as a PeerFailure naming the step and what the backend said, or None when it is
    something else (a bug, out of memory) that must propagate as it is."""
    text = str(error)
    what = next((meaning for sign, meaning in _SIGNS.items() if sign in text.lower()), None)
    if what is None or not isinstance(error, RuntimeError):
        return None
    # The backend's first line, without its source-file prefix: it names the operation.
    detail = re.sub(r"^\[[^\]]*\]\s*", "", text.strip().splitlines()[0])[:200]
    limit = f" (dist_timeout_s={timeout_s:g})" if timeout_s and "timed out" in what else ""
    return PeerFailure(f"step {step}: a collective {what}{limit}: {detail}; a rank died or stalled, so this one "
                       "stops (torchrun --max-restarts restarts the job from the last checkpoint)")
