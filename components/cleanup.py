"""KFP components: the exit handler's cleanup, deleting what the run made on the cluster (its
Katib Experiment, its TrainJob) if there is any."""

from kfp import dsl

from components.image import SSR_IMAGE


@dsl.component(base_image=SSR_IMAGE, install_kfp_package=False)
def delete_trainjob(run_id: str, num_nodes: int, status: dsl.PipelineTaskFinalStatus) -> None:
    """Same as ``ssr trainjob delete --run-id RUN_ID`` (absent is fine); with one node, nothing
    to do. Runs however the pipeline ended: failed, cancelled or succeeded."""
    from ssr.steps.trainjob import delete_trainjob_step

    delete_trainjob_step(run_id, num_nodes, status.state)


@dsl.component(base_image=SSR_IMAGE, install_kfp_package=False)
def cleanup_run(
    run_id: str, num_nodes: int, tune_trials: int, status: dsl.PipelineTaskFinalStatus
) -> None:
    """Same as ``ssr katib delete`` and ``ssr trainjob delete`` of the run (absent is fine),
    each only where the run made one: a search (``tune_trials`` > 0), several nodes. Runs
    however the pipeline ended: failed, cancelled or succeeded."""
    from ssr.steps.tune import cleanup_step

    cleanup_step(run_id, num_nodes, tune_trials, status.state)
