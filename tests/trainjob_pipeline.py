"""A pipeline of just the TrainJob launcher inside the exit handler, for kfp.local tests.

No ``from __future__ import annotations`` here: KFP reads the parameter types at definition.
"""

from kfp import dsl

from components import delete_trainjob, train_distributed


@dsl.pipeline(name="ssr-trainjob-local")
def launch_only(artifact_uri: str, checkpoint_root: str, image: str, num_nodes: int = 2):
    """Import a Dataset folder, launch the TrainJob on it, delete the job at the end."""
    cleanup = delete_trainjob(run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, num_nodes=num_nodes)
    with dsl.ExitHandler(cleanup):
        data = dsl.importer(artifact_uri=artifact_uri, artifact_class=dsl.Dataset)
        train_distributed(
            processed=data.output,
            checkpoint_root=checkpoint_root,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            image=image,
            num_nodes=num_nodes,
            gpus_per_node="1",
            deadline_seconds=3600,
            epochs=1,
        )
