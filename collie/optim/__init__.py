"""Optimizers: the in-backward LOMO family (:class:`Lomo`, :class:`AdaLomo`, which
update parameters during backward and expose ``updates_in_backward = True``) and
standard ``torch.optim`` optimizers (:class:`Adan`, :class:`Lion`, :class:`SophiaG`)."""

from collie.optim.adalomo import AdaLomo
from collie.optim.adan import Adan
from collie.optim.lion import Lion
from collie.optim.lomo import Lomo
from collie.optim.sophiag import SophiaG

__all__ = ["AdaLomo", "Adan", "Lion", "Lomo", "SophiaG"]
