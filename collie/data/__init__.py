from collie.data.classification import CollieDatasetForClassification
from collie.data.collate import ColliePadder
from collie.data.datasets import CollieDatasetForGeneration, CollieDatasetForTraining
from collie.data.records import DataError
from collie.data.sampler import GlobalBatchSampler

__all__ = ["ColliePadder", "CollieDatasetForClassification", "CollieDatasetForGeneration", "CollieDatasetForTraining",
           "DataError", "GlobalBatchSampler"]
