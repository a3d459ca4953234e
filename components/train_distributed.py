"""KFP component: multi-node training as a Kubeflow Trainer TrainJob, launched and followed
from a small pod (no GPU); exports the best checkpoint like :mod:`components.train`."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import SSR_IMAGE


@dsl.component(base_image=SSR_IMAGE, install_kfp_package=False)
def train_distributed(
    processed: Input[Dataset],
    model: Output[Model],
    checkpoint_root: str,
    run_id: str,
    image: str,
    num_nodes: int,
    gpus_per_node: str,
    deadline_seconds: int,
    config_yaml: str = "",
    overrides: list = [],  # noqa: B006 - KFP parameter default
    epochs: int = 0,
    tuned_overrides: list = [],  # noqa: B006
) -> NamedTuple("Outputs", [("best_val_loss", float)]):
    """Same as ``ssr trainjob launch``: ``torchrun -m ssr train --resume auto`` on
    ``num_nodes`` nodes of ``image`` in ``<checkpoint_root>/<run_id>`` (``s3://``); re-attaches
    to the run's job on a retry; returns the best validation loss. ``run_id`` must be exactly
    ``dsl.PIPELINE_JOB_ID_PLACEHOLDER``; ``tuned_overrides`` (the tune step's) win over
    ``overrides``."""
    from ssr.steps.trainjob import distributed_train_step

    result = distributed_train_step(
        processed.path,
        processed.uri,
        model.path,
        checkpoint_root,
        run_id,
        config_yaml,
        [*overrides, *tuned_overrides],
        epochs,
        num_nodes,
        gpus_per_node,
        image,
        deadline_seconds,
    )
    model.metadata.update(result)
    from collections import namedtuple

    return namedtuple("Outputs", ["best_val_loss"])(float(result["best_val_loss"]))
