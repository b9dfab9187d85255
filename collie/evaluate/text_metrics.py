"""BLEU and ROUGE of generated text against references, computed by the libraries people
report them with (`sacrebleu`, `rouge-score`), over the predictions of every data-parallel rank.

Both read what `EvaluatorForGeneration` returns (`pred`, `target`), or a CoLLiE `eval_fn`'s
`{"pred": [...], "target": [...]}` (a target may be a list of references); samples without a
target are skipped. Scores are on the 0-100 scale the papers use (CoLLiE's own were 0-1).
"""

from __future__ import annotations

from typing import Callable, Optional

from collie.evaluate.metrics import PairMetric


class _TextPairMetric(PairMetric):
    def pairs_of(self, result: dict) -> list[tuple[str, tuple[str, ...]]]:
        """(prediction, references): a target is one string or, as in CoLLiE, a list of them."""
        return [(pred, (target,) if isinstance(target, str) else tuple(target))
                for pred, target in zip(result["pred"], result["target"]) if target is not None]


# CoLLiE's smoothing names -> sacrebleu's (the same methods of Chen & Cherry 2014, same constants).
_SMOOTHING = {"no_smooth": "none", "smooth1": "floor", "smooth2": "add-k"}


class BleuMetric(_TextPairMetric):
    """BLEU (sacrebleu), 0-100. `average`: "micro" is corpus BLEU (the default: what papers
    report), "macro" the mean of sentence BLEU (CoLLiE's default). `tokenize`: sacrebleu's
    tokenizer — "13a" (its default), "zh" for Chinese, "intl", "char", "none", ...; CoLLiE's
    `split_fn` (text -> words) replaces it. `ngram`: the highest n-gram order. `smooth`: CoLLiE's
    "no_smooth", "smooth1", "smooth2", or None for sacrebleu's default (exp)."""

    def __init__(self, split_fn: Optional[Callable[[str], list[str]]] = None, ngram: int = 4,
                 smooth: Optional[str] = None, average: str = "micro", gather_result: bool = True, *,
                 tokenize: Optional[str] = None, lowercase: bool = False) -> None:
        from sacrebleu.metrics import BLEU  # sacrebleu loads only when BLEU is asked for

        if split_fn is not None and tokenize is not None:
            raise ValueError("BleuMetric: give split_fn or tokenize, not both (split_fn's words are scored untokenized)")
        if smooth is not None and smooth not in _SMOOTHING:
            raise ValueError(f"BleuMetric(smooth={smooth!r}): collie scores BLEU with sacrebleu, which has "
                             f"{', '.join(_SMOOTHING)}; use one of those")
        if average not in ("micro", "macro"):
            raise ValueError(f"BleuMetric(average={average!r}): use 'micro' (corpus BLEU) or 'macro' (mean sentence BLEU)")
        self.split_fn, self.average = split_fn, average
        self.bleu = BLEU(tokenize="none" if split_fn is not None else (tokenize or "13a"), lowercase=lowercase,
                         max_ngram_order=ngram, smooth_method=_SMOOTHING.get(smooth, "exp"),
                         effective_order=average == "macro")
        super().__init__(gather_result)

    def get_metric(self) -> dict:
        if not self.pairs:
            return {"bleu": float("nan")}
        preds = [self._words(pred) for pred, _ in self.pairs]
        references = [[self._words(ref) for ref in refs] for _, refs in self.pairs]
        if self.average == "macro":
            scores = [self.bleu.sentence_score(pred, refs).score for pred, refs in zip(preds, references)]
            return {"bleu": sum(scores) / len(scores)}
        if len({len(refs) for refs in references}) > 1:
            raise ValueError("BleuMetric: corpus BLEU needs the same number of references for every sample; "
                             "use average='macro' for varying numbers")
        return {"bleu": self.bleu.corpus_score(preds, [list(stream) for stream in zip(*references)]).score}

    def _words(self, text: str) -> str:
        return text if self.split_fn is None else " ".join(self.split_fn(text))


# CoLLiE's ROUGE names and statistics -> rouge-score's.
_ROUGE_TYPES = {"rouge-1": "rouge1", "rouge-2": "rouge2", "rouge-3": "rouge3", "rouge-4": "rouge4",
                "rouge-5": "rouge5", "rouge-l": "rougeL"}
_STATS = {"r": "recall", "p": "precision", "f": "fmeasure"}


class RougeMetric(_TextPairMetric):
    """Mean ROUGE over samples (rouge-score), 0-100: F1 of rouge1, rouge2, rougeL by default,
    keyed by rouge-score's names; with several references, the best one counts.
    `metrics`: CoLLiE's names ("rouge-1" ... "rouge-5", "rouge-l") instead of `rouge_types`.
    `stats`: CoLLiE's "r", "p", "f" — then the keys are `<type>-<stat>` (e.g. `rouge1-r`).
    `split_fn` (CoLLiE, text -> words) or `tokenizer` (an object with `tokenize(text) -> list`):
    rouge-score's own keeps only ASCII letters and digits, so Chinese needs one (e.g.
    `CharacterTokenizer`). `use_stemmer` as in rouge-score."""

    def __init__(self, metrics: Optional[list[str]] = None, stats: Optional[list[str]] = None,
                 split_fn: Optional[Callable[[str], list[str]]] = None, gather_result: bool = True, *,
                 rouge_types: tuple[str, ...] = ("rouge1", "rouge2", "rougeL"), use_stemmer: bool = False,
                 tokenizer: Optional[object] = None) -> None:
        from rouge_score.rouge_scorer import RougeScorer  # rouge-score loads only when ROUGE is asked for

        unknown = [m for m in metrics or () if m.lower() not in _ROUGE_TYPES] + \
            [s for s in stats or () if s.lower() not in _STATS]
        if unknown:
            raise ValueError(f"RougeMetric: unknown {unknown}; metrics are {list(_ROUGE_TYPES)}, stats {list(_STATS)}")
        if split_fn is not None and tokenizer is not None:
            raise ValueError("RougeMetric: give split_fn or tokenizer, not both")
        self.rouge_types = tuple(_ROUGE_TYPES[m.lower()] for m in metrics) if metrics else tuple(rouge_types)
        self.stats = [s.lower() for s in stats] if stats else None
        tokenizer = _SplitTokenizer(split_fn) if split_fn is not None else tokenizer
        self.scorer = RougeScorer(list(self.rouge_types), use_stemmer=use_stemmer, tokenizer=tokenizer)
        super().__init__(gather_result)

    def get_metric(self) -> dict:
        keys = [(name, "f", name) for name in self.rouge_types] if self.stats is None else \
            [(name, stat, f"{name}-{stat}") for name in self.rouge_types for stat in self.stats]
        if not self.pairs:
            return {key: float("nan") for _, _, key in keys}
        totals = dict.fromkeys((key for _, _, key in keys), 0.0)
        for pred, refs in self.pairs:
            scores = self.scorer.score_multi(list(refs), pred) if len(refs) > 1 else self.scorer.score(refs[0], pred)
            for name, stat, key in keys:
                totals[key] += getattr(scores[name], _STATS[stat])
        return {key: 100.0 * total / len(self.pairs) for key, total in totals.items()}


class _SplitTokenizer:
    """rouge-score's tokenizer interface over CoLLiE's `split_fn`."""

    def __init__(self, split_fn: Callable[[str], list[str]]) -> None:
        self.split_fn = split_fn

    def tokenize(self, text: str) -> list[str]:
        return list(self.split_fn(text))


class CharacterTokenizer:
    """ROUGE over characters (no spaces): what Chinese text needs."""

    def __init__(self, normalise: Callable[[str], str] = str.strip) -> None:
        self.normalise = normalise

    def tokenize(self, text: str) -> list[str]:
        return [c for c in self.normalise(text) if not c.isspace()]
