"""KFP component: register the model in the MLflow registry and run the promotion gate."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model

from components.image import SSR_IMAGE


@dsl.component(base_image=SSR_IMAGE, install_kfp_package=False)
def register(
    processed: Input[Dataset],
    model: Input[Model],
    report: Input[Artifact],
    pipeline_run_id: str,
    model_name: str,
    min_accuracy: float,
    margin: float,
    p_value: float,
    baseline_margin: float,
    config_yaml: str = "",
    overrides: list = [],  # noqa: B006 - KFP parameter default
) -> NamedTuple("Outputs", [("version", str), ("promoted", bool)]):
    """Same as ``ssr register`` (challenger alias, gate, champion); returns the version and
    whether the gate made it champion (the deploy step runs only then).

    Idempotent per ``pipeline_run_id``: a retried or re-run step finds the version this run
    registered and moves no alias again."""
    from collections import namedtuple

    from ssr.steps import register_step

    result = register_step(
        processed.path,
        model.path,
        report.path,
        pipeline_run_id,
        config_yaml,
        overrides,
        model_name,
        min_accuracy,
        margin,
        p_value,
        baseline_margin=baseline_margin,
    )
    outputs = namedtuple("Outputs", ["version", "promoted"])
    return outputs(str(result["version"]), bool(result["promoted"]))
