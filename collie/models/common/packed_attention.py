"""Attention of packed rows computed per document: the cost of a row is the sum over its
documents, not its whole length squared.

A packed row holds several documents (their numbers in the attention mask, 0 for padding). A
block-diagonal mask would make SDPA compute every score of the row and discard most of them.
Here each document's queries, keys and values are gathered into a row of their own, documents
of similar length batched together and right-padded, and plain causal SDPA (the flash path on
GPUs) runs on them: right padding is exact for every real token under a causal mask. The outputs
are put back where the tokens were; padding tokens get zeros (nothing reads them: documents
never attend to padding, and padding takes no loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Documents share one padded batch while its cost (longest² × count) stays within this factor of
# what they cost alone (Σ length²); a longer document starts a new batch.
_WASTE = 1.25


class PackedDocuments:
    """The documents of a batch of packed rows, found once per forward and used by every layer."""

    def __init__(self, attention_mask: torch.Tensor) -> None:
        batch, length = attention_mask.shape
        self.shape = (batch, length)
        numbers = attention_mask.cpu()
        starts = torch.ones_like(numbers, dtype=torch.bool)
        starts[:, 1:] = numbers[:, 1:] != numbers[:, :-1]
        segments = []  # (flat start, length) of every document
        for row in range(batch):
            edges = starts[row].nonzero().flatten().tolist() + [length]
            for begin, end in zip(edges[:-1], edges[1:]):
                if int(numbers[row, begin]) > 0:
                    segments.append((row * length + begin, end - begin))
        segments.sort(key=lambda s: -s[1])
        self.longest = segments[0][1] if segments else 0
        device = attention_mask.device
        # (gather index [documents, longest], flat positions of the real tokens, their place in the gather)
        self.groups: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        group: list[tuple[int, int]] = []
        for segment in segments + [(0, 0)]:
            longest = group[0][1] if group else 0
            cost_alone = sum(n * n for _, n in group) + segment[1] ** 2
            if group and (segment[1] == 0 or longest * longest * (len(group) + 1) > _WASTE * cost_alone):
                self.groups.append(self._gather(group, device))
                group = []
            if segment[1]:
                group.append(segment)

    def fits_window(self, sliding_window) -> bool:
        """Whether plain causal attention is exact within every document (a sliding window shorter
        than a document is not: that row keeps its mask)."""
        return sliding_window is None or self.longest <= sliding_window

    @staticmethod
    def _gather(group: list[tuple[int, int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        longest = group[0][1]
        index = torch.zeros(len(group), longest, dtype=torch.long)
        real = torch.zeros(len(group), longest, dtype=torch.bool)
        for k, (start, n) in enumerate(group):
            index[k, :n] = torch.arange(start, start + n)
            real[k, :n] = True
        return index.to(device), index[real].to(device), real.flatten().nonzero().flatten().to(device)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
        """q, k, v: [batch, heads, length, head_dim] (as many heads each) → attention output, same shape."""
        batch, heads, length, dim = q.shape
        flat = [x.transpose(1, 2).reshape(batch * length, heads, x.shape[-1]) for x in (q, k, v)]
        positions, values = [], []
        for index, real_positions, real_places in self.groups:
            qs, ks, vs = (x[index].transpose(1, 2) for x in flat)   # [documents, heads, longest, dim]
            out = F.scaled_dot_product_attention(qs, ks, vs, dropout_p=dropout_p, is_causal=True)
            positions.append(real_positions)
            values.append(out.transpose(1, 2).reshape(-1, heads, v.shape[-1])[real_places])
        out = flat[2].new_zeros(batch * length, heads, v.shape[-1])
        if positions:
            out = out.index_put((torch.cat(positions),), torch.cat(values))
        return out.view(batch, length, heads, -1).transpose(1, 2)
