"""KFP component: train the model with automatic resume, export the best checkpoint."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import SSR_IMAGE


@dsl.component(base_image=SSR_IMAGE, install_kfp_package=False)
def train(
    processed: Input[Dataset],
    model: Output[Model],
    checkpoint_root: str,
    run_id: str,
    config_yaml: str = "",
    overrides: list = [],  # noqa: B006 - KFP parameter default
    epochs: int = 0,
    tuned_overrides: list = [],  # noqa: B006
) -> NamedTuple("Outputs", [("best_val_loss", float)]):
    """Same as ``ssr train --resume auto`` in ``<checkpoint_root>/<run_id>``; returns the best
    validation loss. ``run_id`` must be exactly ``dsl.PIPELINE_JOB_ID_PLACEHOLDER``: the KFP
    driver substitutes the placeholder only in a parameter that is nothing else.
    ``tuned_overrides`` (the tune step's best values) come after ``overrides`` and win."""
    from ssr.steps import train_step

    result = train_step(
        processed.path,
        model.path,
        checkpoint_root,
        run_id,
        config_yaml,
        [*overrides, *tuned_overrides],
        epochs,
    )
    model.metadata.update(result)
    from collections import namedtuple

    return namedtuple("Outputs", ["best_val_loss"])(float(result["best_val_loss"]))
