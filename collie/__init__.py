"""collie: fine-tune and further pre-train LLMs on the hardware you have.

The names CoLLiE 1.0 exported from its top level are here too (see docs/collie-api.md): a CoLLiE
script's `from collie import Trainer, CollieConfig, …` runs on collie's engine."""

from collie.callbacks import Callback, CheckpointCallback, HasMonitorCallback, LoadBestModelCallback
from collie.config import CollieConfig, ConfigError
from collie.controller import (
    Evaluator,
    EvaluatorForClassfication,
    EvaluatorForGeneration,
    EvaluatorForPerplexity,
    Trainer,
)
from collie.data import (
    CollieBatchSampler,
    CollieDataLoader,
    CollieDatasetForClassification,
    CollieDatasetForGeneration,
    CollieDatasetForPerplexity,
    CollieDatasetForTraining,
)
from collie.metrics import AccuracyMetric, BaseMetric, BleuMetric, ClassifyFPreRecMetric, DecodeMetric, PPLMetric
from collie.models import (
    CausalLMOutput,
    ChatGLM2ForCausalLM,
    ChatGLMForCausalLM,
    CollieModel,
    CollieModelForCausalLM,
    InternLM2ForCausalLM,
    InternLMForCausalLM,
    LlamaForCausalLM,
    Moss003MoonForCausalLM,
    MossForCausalLM,
)
from collie.models.lazy_exports import lazy_exports
from collie.module import (
    ColumnParallelLinear,
    ColumnParallelLinearWithoutBias,
    ColumnParallelLMHead,
    GPTLMLoss,
    LinearWithHiddenStates,
    PipelineGenerationMixin,
    RowParallelLinear,
    RowParallelLinearWithoutBias,
    VocabParallelEmbedding,
)
from collie.optim import AdaLomo, Adan, Lion, Lomo, SophiaG
from collie.utils import (
    BaseMonitor,
    ColliePadder,
    CPUMemoryMonitor,
    DiskIOMonitor,
    EvalMonitor,
    LossMonitor,
    LRMonitor,
    MemoryMonitor,
    NetworkIOMonitor,
    StepTimeMonitor,
    TGSMonitor,
    auto_param_call,
    broadcast_tensor,
    concat_tensor,
    dict_as_params,
    env,
    find_tensors,
    get_keys_to_not_convert,
    is_static_method,
    is_zero3_enabled,
    progress,
    set_seed,
    setup_distribution,
    setup_ds_engine,
    zero3_load_state_dict,
)

__all__ = [
    # collie's own
    "CausalLMOutput", "CollieModel", "ConfigError", "AdaLomo",
    # CoLLiE 1.0's top level
    "Trainer", "Evaluator", "EvaluatorForPerplexity", "EvaluatorForClassfication", "EvaluatorForGeneration", "Server",
    "CollieConfig",
    "LlamaForCausalLM", "MossForCausalLM", "CollieModelForCausalLM", "ChatGLMForCausalLM", "InternLMForCausalLM",
    "ChatGLM2ForCausalLM", "Moss003MoonForCausalLM", "InternLM2ForCausalLM",
    "PipelineGenerationMixin", "ColumnParallelLinear", "RowParallelLinear", "VocabParallelEmbedding",
    "ColumnParallelLinearWithoutBias", "RowParallelLinearWithoutBias", "LinearWithHiddenStates",
    "ColumnParallelLMHead", "GPTLMLoss",
    "Callback", "CheckpointCallback", "HasMonitorCallback", "LoadBestModelCallback",
    "progress", "setup_distribution", "set_seed", "env", "setup_ds_engine", "zero3_load_state_dict",
    "is_zero3_enabled", "broadcast_tensor", "concat_tensor", "find_tensors", "BaseProvider", "GradioProvider",
    "BaseMonitor", "StepTimeMonitor", "TGSMonitor", "MemoryMonitor", "LossMonitor", "EvalMonitor", "LRMonitor",
    "_GenerationStreamer", "dict_as_params", "DashProvider", "is_static_method", "auto_param_call",
    "NetworkIOMonitor", "DiskIOMonitor", "CPUMemoryMonitor", "ColliePadder", "get_keys_to_not_convert",
    "BaseMetric", "DecodeMetric", "AccuracyMetric", "PPLMetric", "BleuMetric", "ClassifyFPreRecMetric",
    "CollieDatasetForClassification", "CollieBatchSampler", "CollieDataLoader", "CollieDatasetForTraining",
    "CollieDatasetForGeneration", "CollieDatasetForPerplexity",
    "Lomo", "Lion", "SophiaG", "Adan",
]
__version__ = "0.1.0"

# Serving names are imported on first use: the serving stack (FastAPI, uvicorn, pydantic; 20 MB
# resident) is not a cost of every process that trains.
__getattr__, __dir__ = lazy_exports(globals(), {
    "Server": "collie.controller:Server",
    **{name: f"collie.utils:{name}" for name in ("BaseProvider", "DashProvider", "GradioProvider",
                                                   "_GenerationStreamer")},
})
