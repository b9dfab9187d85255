"""CoLLiE's `collie.data.dataset` path: its dataset classes, which live in `collie.data.datasets`
and `collie.data.classification`."""

from collie.data.classification import CollieDatasetForClassification
from collie.data.datasets import CollieDatasetForGeneration, CollieDatasetForPerplexity, CollieDatasetForTraining

__all__ = ["CollieDatasetForTraining", "CollieDatasetForClassification", "CollieDatasetForGeneration",
           "CollieDatasetForPerplexity"]
