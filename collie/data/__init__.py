from collie.data.batch_sampler import CollieBatchSampler
from collie.data.classification import CollieDatasetForClassification
from collie.data.collate import ColliePadder
from collie.data.dataloader import CollieDataLoader
from collie.data.datasets import CollieDatasetForGeneration, CollieDatasetForPerplexity, CollieDatasetForTraining
from collie.data.preference import CollieDatasetForPreference, PreferenceCollator
from collie.data.records import DataError
from collie.data.sampler import GlobalBatchSampler

__all__ = ["CollieBatchSampler", "CollieDataLoader", "ColliePadder", "CollieDatasetForClassification",
           "CollieDatasetForGeneration", "CollieDatasetForPerplexity", "CollieDatasetForPreference",
           "CollieDatasetForTraining", "DataError", "GlobalBatchSampler", "PreferenceCollator"]
