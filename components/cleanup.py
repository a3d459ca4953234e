"""KFP component: the exit handler's cleanup, deleting the run's TrainJob if there is one."""

from kfp import dsl

from components.image import SSR_IMAGE


@dsl.component(base_image=SSR_IMAGE, install_kfp_package=False)
def delete_trainjob(run_id: str, num_nodes: int, status: dsl.PipelineTaskFinalStatus) -> None:
    """Same as ``ssr trainjob delete --run-id RUN_ID`` (absent is fine); with one node, nothing
    to do. Runs however the pipeline ended: failed, cancelled or succeeded."""
    from ssr.steps.trainjob import delete_trainjob_step

    delete_trainjob_step(run_id, num_nodes, status.state)
