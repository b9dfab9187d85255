"""Attention of packed rows computed per document: the cost of a row is the sum over its
documents, not its whole length squared.

A packed row holds several documents (their numbers in the attention mask, 0 for padding). A
block-diagonal mask would make SDPA compute every score of the row and discard most of them.
Here the rows are cut into their documents (views, no copies) and plain causal SDPA — the flash
kernels, on CPUs too — runs on each; the outputs are joined back in place. Padding tokens get
zeros: nothing reads them (documents never attend to padding, and padding takes no loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from collie.models.common.attention_layout import AttentionLayout


class PackedDocuments(AttentionLayout):
    """The documents of a batch of packed rows, found once per forward and used by every layer."""

    def __init__(self, attention_mask: torch.Tensor) -> None:
        batch, length = attention_mask.shape
        numbers = attention_mask.cpu()
        starts = torch.ones_like(numbers, dtype=torch.bool)
        starts[:, 1:] = numbers[:, 1:] != numbers[:, :-1]
        # The rows laid end to end, cut into runs of one document (or of padding): (length, is a document).
        self.runs: list[tuple[int, bool]] = []
        for row in range(batch):
            edges = starts[row].nonzero().flatten().tolist() + [length]
            self.runs += [(end - begin, int(numbers[row, begin]) > 0) for begin, end in zip(edges[:-1], edges[1:])]
        self.longest = max((n for n, document in self.runs if document), default=0)

    def fits_window(self, sliding_window) -> bool:
        """Whether plain causal attention is exact within every document (a sliding window shorter
        than a document is not: that row keeps its mask)."""
        return sliding_window is None or self.longest <= sliding_window

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
        """q, k, v: [batch, heads, length, head_dim] (as many heads each) → attention output, same shape."""
        batch, heads, length, _ = q.shape
        sizes = [n for n, _ in self.runs]
        # split/cat, not slicing or gathers: their backward is one cat/split, not a zero-filled
        # tensor of the whole input per document.
        pieces = zip(*(torch.split(x.transpose(1, 2).reshape(batch * length, heads, x.shape[-1]), sizes)
                       for x in (q, k, v)))
        out = []
        for (qs, ks, vs), (_, document) in zip(pieces, self.runs):
            if document:  # [tokens, heads, dim] → [1, heads, tokens, dim] and back
                o = F.scaled_dot_product_attention(qs.transpose(0, 1)[None], ks.transpose(0, 1)[None],
                                                   vs.transpose(0, 1)[None], dropout_p=dropout_p, is_causal=True)
                out.append(o[0].transpose(0, 1))
            else:
                out.append(vs.new_zeros(vs.shape))
        return torch.cat(out).view(batch, length, heads, -1).transpose(1, 2)
