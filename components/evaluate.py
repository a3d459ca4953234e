"""KFP component: evaluate on the held-out test split beside the linear baseline; emit KFP
metrics, a confusion matrix and an HTML report the KFP UI renders."""

from kfp import dsl
from kfp.dsl import (
    HTML,
    Artifact,
    ClassificationMetrics,
    Dataset,
    Input,
    Metrics,
    Model,
    Output,
)

from components.image import SSR_IMAGE


@dsl.component(base_image=SSR_IMAGE, install_kfp_package=False)
def evaluate(
    processed: Input[Dataset],
    model: Input[Model],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[Artifact],
    summary: Output[HTML],
    config_yaml: str = "",
    overrides: list = [],  # noqa: B006 - KFP parameter default
) -> float:
    """Same as ``ssr evaluate --split test``; returns the test accuracy (sentences: the word
    accuracy 1 - WER) for the gate.

    The one output left anonymous (``Output``): ``kfp.local`` 2.17 resolves a task output in a
    ``dsl.If`` condition only by that name (named outputs read as missing: the branch is skipped).

    ``metrics`` holds the model's accuracy, macro-F1 and loss and the baseline's accuracy and
    macro-F1 (sentences: WER and CER with the language model and greedy, and the baseline's);
    ``summary`` is ``report.html`` (model vs baseline, per class or per sentence).
    """
    import shutil

    from ssr.steps import evaluate_step

    result = evaluate_step(processed.path, model.path, report.path, config_yaml, overrides)
    for name, value in result["scalars"].items():
        metrics.log_metric(name, value)
    if "confusion_matrix" in result:  # words only
        confusion.log_confusion_matrix(result["labels"], result["confusion_matrix"])
    shutil.copyfile(result["report_html"], summary.path)
    return float(result["quality"])
