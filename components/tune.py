"""KFP component: the hyper-parameter search as a Katib Experiment, launched and followed from a
small pod (no GPU; the trials get them); its output is the train step's tuned overrides."""

from kfp import dsl
from kfp.dsl import Dataset, Input

from components.image import SSR_IMAGE


@dsl.component(base_image=SSR_IMAGE, install_kfp_package=False)
def tune(
    processed: Input[Dataset],
    checkpoint_root: str,
    run_id: str,
    image: str,
    trials: int,
    parallel_trials: int,
    space_yaml: str,
    gpu_type: str,
    gpus_per_trial: str,
    deadline_seconds: int,
    config_yaml: str = "",
    overrides: list = [],  # noqa: B006 - KFP parameter default
    epochs: int = 0,
) -> list:
    """Same as ``ssr katib launch``: ``trials`` trials of ``ssr train`` (``parallel_trials`` at
    a time) with values from ``space_yaml``; returns the best trial's values as ``key=value``
    overrides, or none with ``trials`` 0 (no search, no cluster asked). A retry re-attaches to
    the run's Experiment. ``run_id`` must be exactly ``dsl.PIPELINE_JOB_ID_PLACEHOLDER``."""
    from ssr.steps.tune import tune_step

    result = tune_step(
        processed.path,
        processed.uri,
        checkpoint_root,
        run_id,
        config_yaml,
        overrides,
        epochs,
        space_yaml,
        trials,
        parallel_trials,
        gpus_per_trial,
        gpu_type,
        image,
        deadline_seconds,
    )
    return list(result["overrides"])
