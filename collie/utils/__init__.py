"""CoLLiE's `collie.utils`: distribution helpers, monitors, data providers, the padder and small
utilities, as facades over collie's rooms."""

from collie.models.lazy_exports import lazy_exports
from collie.utils.dist_utils import (
    broadcast_tensor,
    env,
    is_zero3_enabled,
    set_seed,
    setup_distribution,
    setup_ds_engine,
    zero3_load_state_dict,
)
from collie.utils.metric_wrapper import _MetricsWrapper
from collie.utils.monitor import (
    BaseMonitor,
    CPUMemoryMonitor,
    DiskIOMonitor,
    EvalMonitor,
    LossMonitor,
    LRMonitor,
    MemoryMonitor,
    NetworkIOMonitor,
    StepTimeMonitor,
    TGSMonitor,
    _MultiMonitors,
)
from collie.utils.padder import ColliePadder
from collie.utils.utils import (
    apply_to_collection,
    auto_param_call,
    concat_tensor,
    dict_as_params,
    dictToObj,
    find_tensors,
    get_keys_to_not_convert,
    is_static_method,
    progress,
    stack_tensor,
)

# The providers are imported on first use: the serving stack (FastAPI, uvicorn) is not a cost of
# every process that trains.
__getattr__, __dir__ = lazy_exports(globals(), {name: f"collie.utils.data_provider:{name}" for name in (
    "BaseProvider", "DashProvider", "GradioProvider", "_GenerationStreamer")})

__all__ = ["setup_distribution", "set_seed", "env", "setup_ds_engine", "zero3_load_state_dict", "is_zero3_enabled",
           "broadcast_tensor", "find_tensors", "progress", "dict_as_params", "dictToObj", "apply_to_collection",
           "is_static_method", "auto_param_call", "get_keys_to_not_convert", "concat_tensor", "stack_tensor",
           "BaseProvider", "GradioProvider", "_GenerationStreamer", "DashProvider", "_MetricsWrapper", "BaseMonitor",
           "StepTimeMonitor", "_MultiMonitors", "TGSMonitor", "MemoryMonitor", "LossMonitor", "EvalMonitor",
           "LRMonitor", "NetworkIOMonitor", "DiskIOMonitor", "CPUMemoryMonitor", "ColliePadder"]
