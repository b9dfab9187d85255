"""CoLLiE's `collie.utils.metric_wrapper`: its evaluator-internal wrapper is not carried over."""

from collie.utils.refused import refused_class

_MetricsWrapper = refused_class(
    "_MetricsWrapper", "an evaluator internal of CoLLiE; give metrics to an Evaluator as {name: metric}")

__all__ = ["_MetricsWrapper"]
