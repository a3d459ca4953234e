"""KFP component: raw EMG (or generated synthetic EMG) -> preprocessed, model-ready data set."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.image import SSR_IMAGE


@dsl.component(base_image=SSR_IMAGE, install_kfp_package=False)
def preprocess(
    processed: Output[Dataset],
    data_uri: str = "",
    config_yaml: str = "",
    overrides: list = [],  # noqa: B006 - KFP parameter default
    synth_args: list = [],  # noqa: B006
) -> None:
    """Same as ``ssr data synth`` (when ``data_uri`` is empty) then ``ssr preprocess``."""
    from ssr.steps import preprocess_step

    summary = preprocess_step(processed.path, data_uri, config_yaml, overrides, synth_args)
    processed.metadata.update(summary)
