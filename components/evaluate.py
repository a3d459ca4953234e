"""KFP component: evaluate on the held-out test split, emit KFP metrics and a confusion matrix."""

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.image import SSR_IMAGE


@dsl.component(base_image=SSR_IMAGE, install_kfp_package=False)
def evaluate(
    processed: Input[Dataset],
    model: Input[Model],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[Artifact],
    config_yaml: str = "",
    overrides: list = [],  # noqa: B006 - KFP parameter default
) -> float:
    """Same as ``ssr evaluate --split test``; returns the test accuracy for the gate."""
    from ssr.steps import evaluate_step

    result = evaluate_step(processed.path, model.path, report.path, config_yaml, overrides)
    for name, value in result["scalars"].items():
        metrics.log_metric(name, value)
    confusion.log_confusion_matrix(result["labels"], result["confusion_matrix"])
    return float(result["scalars"]["accuracy"])
