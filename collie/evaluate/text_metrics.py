"""BLEU and ROUGE of generated text against references, computed by the libraries people
report them with (`sacrebleu`, `rouge-score`), over the predictions of every data-parallel rank.

Both read what `EvaluatorForGeneration` returns (`pred`, `target`); samples without a target
are skipped. Scores are on the 0-100 scale the papers use.
"""

from __future__ import annotations

from typing import Callable, Optional

from collie.evaluate.metrics import PairMetric


class _TextPairMetric(PairMetric):
    def pairs_of(self, result: dict) -> list[tuple[str, str]]:
        return [(pred, target) for pred, target in zip(result["pred"], result["target"]) if target is not None]


class BleuMetric(_TextPairMetric):
    """Corpus BLEU (sacrebleu). `tokenize`: sacrebleu's tokenizer — "13a" (its default), "zh"
    for Chinese, "intl", "char", "none", ..."""

    def __init__(self, tokenize: str = "13a", lowercase: bool = False) -> None:
        from sacrebleu.metrics import BLEU

        self.bleu = BLEU(tokenize=tokenize, lowercase=lowercase)
        super().__init__()

    def get_metric(self) -> dict:
        if not self.pairs:
            return {"bleu": float("nan")}
        preds, targets = zip(*self.pairs)
        return {"bleu": self.bleu.corpus_score(list(preds), [list(targets)]).score}


class RougeMetric(_TextPairMetric):
    """Mean ROUGE F1 over samples (rouge-score): rouge1, rouge2, rougeL by default. `tokenizer`:
    an object with `tokenize(text) -> list[str]` (rouge-score's own keeps only ASCII letters and
    digits, so Chinese needs one, e.g. splitting into characters); `use_stemmer` as in
    rouge-score."""

    def __init__(self, rouge_types: tuple[str, ...] = ("rouge1", "rouge2", "rougeL"), use_stemmer: bool = False,
                 tokenizer: Optional[object] = None) -> None:
        from rouge_score.rouge_scorer import RougeScorer

        self.rouge_types = tuple(rouge_types)
        self.scorer = RougeScorer(list(self.rouge_types), use_stemmer=use_stemmer, tokenizer=tokenizer)
        super().__init__()

    def get_metric(self) -> dict:
        if not self.pairs:
            return {name: float("nan") for name in self.rouge_types}
        totals = dict.fromkeys(self.rouge_types, 0.0)
        for pred, target in self.pairs:
            scores = self.scorer.score(target, pred)
            for name in self.rouge_types:
                totals[name] += scores[name].fmeasure
        return {name: 100.0 * total / len(self.pairs) for name, total in totals.items()}


class CharacterTokenizer:
    """ROUGE over characters (no spaces): what Chinese text needs."""

    def __init__(self, normalise: Callable[[str], str] = str.strip) -> None:
        self.normalise = normalise

    def tokenize(self, text: str) -> list[str]:
        return [c for c in self.normalise(text) if not c.isspace()]
