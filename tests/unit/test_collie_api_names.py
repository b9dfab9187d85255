"""Every public name of CoLLiE 1.0 (its top-level and subpackage `__init__`s) imports from CoLLiE's
path, is listed in docs/collie-api.md, and does what the doc says: works, or refuses in one line."""

import importlib
import inspect
import os
import re

import pytest

import collie

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(ROOT, "docs", "collie-api.md")

# CoLLiE 1.0's exports (OpenLMLab/collie, every `collie/**/__init__.py`), read when this was written.
COLLIE_EXPORTS = {
    "collie": "AccuracyMetric Adan BaseMetric BaseMonitor BaseProvider BleuMetric CPUMemoryMonitor Callback "
              "ChatGLM2ForCausalLM ChatGLMForCausalLM CheckpointCallback ClassifyFPreRecMetric CollieBatchSampler "
              "CollieConfig CollieDataLoader CollieDatasetForClassification CollieDatasetForGeneration "
              "CollieDatasetForPerplexity CollieDatasetForTraining CollieModelForCausalLM ColliePadder "
              "ColumnParallelLMHead ColumnParallelLinear ColumnParallelLinearWithoutBias DashProvider DecodeMetric "
              "DiskIOMonitor EvalMonitor Evaluator EvaluatorForClassfication EvaluatorForGeneration "
              "EvaluatorForPerplexity GPTLMLoss GradioProvider HasMonitorCallback InternLM2ForCausalLM "
              "InternLMForCausalLM LRMonitor LinearWithHiddenStates Lion LlamaForCausalLM LoadBestModelCallback Lomo "
              "LossMonitor MemoryMonitor Moss003MoonForCausalLM MossForCausalLM NetworkIOMonitor PPLMetric "
              "PipelineGenerationMixin RowParallelLinear RowParallelLinearWithoutBias Server SophiaG StepTimeMonitor "
              "TGSMonitor Trainer VocabParallelEmbedding _GenerationStreamer auto_param_call broadcast_tensor "
              "concat_tensor dict_as_params env find_tensors get_keys_to_not_convert is_static_method "
              "is_zero3_enabled progress set_seed setup_distribution setup_ds_engine zero3_load_state_dict",
    "collie.callbacks": "Callback CheckpointCallback HasMonitorCallback LoadBestModelCallback",
    "collie.controller": "Evaluator EvaluatorForClassfication EvaluatorForGeneration EvaluatorForPerplexity Server "
                         "Trainer",
    "collie.data": "CollieBatchSampler CollieDataLoader CollieDatasetForClassification CollieDatasetForGeneration "
                   "CollieDatasetForPerplexity CollieDatasetForTraining",
    "collie.driver": "FileIODriver IODriver PetrelIODriver",
    "collie.driver.io": "FileIODriver IODriver PetrelIODriver",
    "collie.log": "logger print",
    "collie.metrics": "AccuracyMetric BaseMetric BleuMetric ClassifyFPreRecMetric DecodeMetric PPLMetric RougeMetric",
    "collie.models": "ChatGLM2ForCausalLM ChatGLMForCausalLM CollieModelForCausalLM InternLM2ForCausalLM "
                     "InternLMForCausalLM LlamaForCausalLM Moss003MoonForCausalLM MossForCausalLM",
    "collie.models.chatglm": "ChatGLMForCausalLM",
    "collie.models.chatglm2": "ChatGLM2ForCausalLM",
    "collie.models.internlm": "InternLMForCausalLM InternLMLayer",
    "collie.models.internlm2": "InternLM2ForCausalLM",
    "collie.models.llama": "LlamaForCausalLM LlamaLayer",
    "collie.models.moss": "MossForCausalLM",
    "collie.models.moss_moon": "Moss003MoonForCausalLM",
    "collie.optim": "AdaLomo Adan Lion Lomo SophiaG",
    "collie.utils": "BaseMonitor BaseProvider CPUMemoryMonitor ColliePadder DashProvider DiskIOMonitor EvalMonitor "
                    "GradioProvider LRMonitor LossMonitor MemoryMonitor NetworkIOMonitor StepTimeMonitor TGSMonitor "
                    "_GenerationStreamer _MetricsWrapper _MultiMonitors apply_to_collection auto_param_call "
                    "broadcast_tensor concat_tensor dictToObj dict_as_params env find_tensors get_keys_to_not_convert "
                    "is_static_method is_zero3_enabled progress set_seed setup_distribution setup_ds_engine "
                    "stack_tensor zero3_load_state_dict",
    # The paths CoLLiE's README and examples import from.
    "collie.module": "GPTLMLoss PipelineGenerationMixin ColumnParallelLinear RowParallelLinear VocabParallelEmbedding "
                     "ColumnParallelLinearWithoutBias RowParallelLinearWithoutBias LinearWithHiddenStates "
                     "ColumnParallelLMHead",
    "collie.config": "CollieConfig",
}
SUBMODULE_PATHS = {
    "collie.controller.trainer": "Trainer", "collie.controller.evaluator": "EvaluatorForPerplexity EvaluatorForGeneration",
    "collie.controller.server": "Server", "collie.utils.monitor": "StepTimeMonitor TGSMonitor MemoryMonitor",
    "collie.utils.data_provider": "GradioProvider", "collie.utils.padder": "ColliePadder",
    "collie.utils.dist_utils": "setup_distribution set_seed env", "collie.metrics.decode": "DecodeMetric",
    "collie.metrics.ppl": "PPLMetric", "collie.models.llama.model": "LlamaForCausalLM",
    "collie.optim.lomo": "Lomo", "collie.data.dataset": "CollieDatasetForTraining",
}
# A refused class whose construction works and whose methods refuse.
REFUSAL_CALLS = {"PetrelIODriver": lambda cls: cls.load("s3://bucket/file")}


def documented() -> dict[tuple[str, str], str]:
    """(module, name) → status, from the doc's `## module` headings and `| name | status | note |` rows."""
    rows, module = {}, None
    for line in open(DOC).read().splitlines():
        heading = re.match(r"^## `([\w.]+)`", line)
        if heading:
            module = heading.group(1)
        row = re.match(r"^\| `(\w+)` \| (✓|refused) \|", line)
        if row and module:
            rows[(module, row.group(1))] = row.group(2)
    return rows


DOCUMENTED = documented()
ROWS = sorted((module, name) for module, names in COLLIE_EXPORTS.items() for name in names.split())


@pytest.mark.parametrize("module,name", [row for row in ROWS if row[0] != "collie"])
def test_every_collie_name_is_documented_and_does_what_the_doc_says(module, name):
    status = DOCUMENTED.get((module, name)) or DOCUMENTED.get(("collie.driver", name))
    assert status is not None, f"{module}.{name} is not in docs/collie-api.md"
    obj = getattr(importlib.import_module(module), name)
    if status == "✓":
        assert not (inspect.isclass(obj) and "Refused in collie" in (obj.__doc__ or "")), f"{name} is a refusal"
        return
    with pytest.raises(NotImplementedError) as refused:
        call_refused(name, obj)
    message = str(refused.value)
    assert message.startswith(f"{name}:") and "\n" not in message and len(message) < 300


def call_refused(name, obj):
    if name in REFUSAL_CALLS:
        return REFUSAL_CALLS[name](obj)
    required = [p for p in inspect.signature(obj).parameters.values()
                if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return obj(*[None] * len(required))


@pytest.mark.parametrize("name", COLLIE_EXPORTS["collie"].split())
def test_collie_exports_every_top_level_name(name):
    assert name in collie.__all__ and hasattr(collie, name)


@pytest.mark.parametrize("module", sorted(SUBMODULE_PATHS))
def test_collie_module_paths_import(module):
    loaded = importlib.import_module(module)
    for name in SUBMODULE_PATHS[module].split():
        assert hasattr(loaded, name), f"{module}.{name}"


def test_the_doc_lists_nothing_collie_does_not_have():
    for module, name in DOCUMENTED:
        assert hasattr(importlib.import_module(module), name), f"docs/collie-api.md lists {module}.{name}"
