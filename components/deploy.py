"""KFP component: roll the KServe InferenceService to the champion the register step promoted
(canary, smoke test, promote or roll back); skips itself where there is no cluster."""

from kfp import dsl
from kfp.dsl import Dataset, Input

from components.image import SSR_IMAGE


@dsl.component(base_image=SSR_IMAGE, install_kfp_package=False)
def deploy(
    processed: Input[Dataset],
    version: str,
    promoted: bool,
    model_name: str,
    inference_service: str,
    namespace: str,
    canary_percent: int,
    config_yaml: str = "",
    overrides: list = [],  # noqa: B006 - KFP parameter default
    timeout_seconds: int = 900,
) -> str:
    """Same as ``ssr deploy --version VERSION`` when register ``promoted`` it; returns what
    happened (``promoted``, ``noop``; ``not_promoted``, or ``skipped`` without a cluster). A
    rollback fails the task; a retry resumes an interrupted rollout and writes nothing twice.
    The smoke test reads the artifact's raw test split; an empty ``namespace`` is the run's
    own."""
    from ssr.steps.deploy import deploy_step

    result = deploy_step(
        processed.path,
        version,
        promoted,
        model_name,
        inference_service,
        namespace,
        canary_percent,
        config_yaml,
        overrides,
        timeout_seconds,
    )
    return str(result["action"])
