"""Attention of packed rows computed per document: the cost of a row is about the sum over its
documents, not its whole length squared.

A packed row holds several documents (their numbers in the attention mask, 0 for padding). A
block-diagonal mask would make SDPA compute every score of the row and discard most of them.
Here the documents of the whole batch are sorted by length into a few groups; each group's
documents are gathered into one batch, right-padded to the group's longest, and plain causal
SDPA (the flash kernels, on CPUs too) runs once per group. Causal attention never lets a real
token see the padding after it, so the result is exact; the outputs are gathered back into
place, and padding tokens of the rows get zeros (nothing reads them: documents never attend
to padding, and padding takes no loss). One call per group instead of one per document: on a
CPU a small SDPA call's fixed cost, forward and backward, is what a document costs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# At most this many SDPA calls per layer: the groups are chosen to pad the least (see `_groups`).
MAX_GROUPS = 4


def _groups(lengths: list[int], count: int) -> list[list[int]]:
    """Indices of `lengths`, sorted by length and cut into at most `count` runs so that the
    padded area, the sum over runs of (documents x longest^2), is smallest (dynamic programming
    over where each run ends; a run may be empty)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)

    def run_area(start: int, end: int) -> int:  # order[start:end] padded to its longest
        return (end - start) * lengths[order[end - 1]] ** 2 if end > start else 0

    best = [run_area(0, end) for end in range(n + 1)]  # one run
    cuts: list[list[int]] = [[0] * (n + 1)]
    for _ in range(1, count):
        choice = [min(range(end + 1), key=lambda start: best[start] + run_area(start, end)) for end in range(n + 1)]
        best = [best[start] + run_area(start, end) for end, start in enumerate(choice)]
        cuts.append(choice)
    runs, end = [], n
    for choice in reversed(cuts):
        start = choice[end]
        runs.append(order[start:end])
        end = start
    return [run for run in reversed(runs) if run]


class PackedDocuments:
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
        documents, offset = [], 0  # (first token in the flattened batch, length)
        for size, document in self.runs:
            if document:
                documents.append((offset, size))
            offset += size
        self.longest = max((size for _, size in documents), default=0)
        # Per group: its longest length and the flattened-batch index of each of its slots (a
        # padding slot repeats its document's last token: causal attention never reads it).
        self.groups: list[tuple[int, torch.Tensor]] = []
        back = [-1] * offset  # each token's row in the groups' outputs laid end to end
        rows = 0
        for group in _groups([size for _, size in documents], MAX_GROUPS):
            longest = max(documents[i][1] for i in group)
            slots = []
            for i in group:
                first, size = documents[i]
                back[first:first + size] = range(rows + len(slots), rows + len(slots) + size)
                slots += list(range(first, first + size)) + [first + size - 1] * (longest - size)
            rows += len(slots)
            self.groups.append((longest, torch.tensor(slots)))
        # Tokens of no document read the zero row after the groups' outputs.
        self.back = torch.tensor([rows if b < 0 else b for b in back])

    def fits_window(self, sliding_window) -> bool:
        """Whether plain causal attention is exact within every document (a sliding window shorter
        than a document is not: that row keeps its mask)."""
        return sliding_window is None or self.longest <= sliding_window

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
        """q, k, v: [batch, heads, length, head_dim] (as many heads each) → attention output, same shape."""
        batch, heads, length, dim = q.shape
        flat = [x.transpose(1, 2).reshape(batch * length, heads, x.shape[-1]) for x in (q, k, v)]
        outputs = []
        for longest, slots in self.groups:
            slots = slots.to(q.device)
            # [documents * longest, heads, dim] → [documents, heads, longest, dim]
            qs, ks, vs = (x.index_select(0, slots).view(-1, longest, heads, x.shape[-1]).transpose(1, 2) for x in flat)
            out = F.scaled_dot_product_attention(qs, ks, vs, dropout_p=dropout_p, is_causal=True)
            outputs.append(out.transpose(1, 2).reshape(-1, heads, out.shape[-1]))
        outputs.append(flat[2].new_zeros(1, heads, flat[2].shape[-1]))
        return torch.cat(outputs).index_select(0, self.back.to(q.device)).view(batch, length, heads, -1).transpose(1, 2)
