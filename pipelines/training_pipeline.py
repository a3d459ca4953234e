"""The training pipeline: preprocess -> train -> evaluate -> (gate) -> register/promote.

Compile with ``make pipeline`` (see :mod:`pipelines.compile`); run on this machine with
``make run-local`` (see :mod:`pipelines.run_local`).

Written for what the KFP backend (2.14 and later; see README.md for 2.5) does with the compiled
YAML, not only for ``kfp.local``:

* the job-id placeholder is substituted only in a parameter that is exactly the placeholder, so
  the train step receives the checkpoint root and the run id separately and joins them;
* the driver reads the accelerator count as a string value, so ``gpu_count`` is a string;
* caching is off for every step: preprocess would be keyed on the ``data_uri`` string, not on
  the data behind it; train, evaluate and register write to object storage and MLflow;
* retries of tasks inside ``dsl.If`` are honoured from KFP 2.14 on; register is idempotent per
  run, so a retry (or a re-run) registers nothing twice.
"""

import os

from kfp import dsl, kubernetes

from components import evaluate, preprocess, register, train
from components.image import SSR_TRAIN_IMAGE

PIPELINE_NAME = "ssr-emg-training"
# Compile-time defaults for the GPU request; both stay run parameters of the pipeline. The count
# is a string: the KFP driver resolves an accelerator count only from a string parameter value.
GPU_TYPE = os.environ.get("SSR_GPU_TYPE", "nvidia.com/gpu")
GPU_COUNT = os.environ.get("SSR_GPU_COUNT", "1")
# Writable by every S3 key a KFP install hands out: the standalone MinIO key and, from KFP 2.15,
# the per-profile keys (which may write shared/, artifacts/ and private/<namespace>/).
CHECKPOINT_ROOT = "s3://mlpipeline/shared/ssr-checkpoints"

# Kubernetes secrets (see k8s/) exposed to the steps as environment variables.
SECRETS = {
    "ssr-s3-credentials": {
        "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
    },
    "ssr-mlflow-credentials": {
        "MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
    },
    "ssr-wandb-credentials": {"WANDB_API_KEY": "WANDB_API_KEY"},
}


def _with_secrets(task: dsl.PipelineTask, names: list[str]) -> dsl.PipelineTask:
    for name in names:
        # W&B is optional: without its secret the step logs to W&B offline.
        optional = name == "ssr-wandb-credentials"
        kubernetes.use_secret_as_env(task, name, SECRETS[name], optional=optional)
    return task


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Silent speech recognition from EMG: preprocess, train, evaluate, register.",
)
def training_pipeline(
    data_uri: str = "",
    config_yaml: str = "",
    overrides: list = [],  # noqa: B006 - KFP parameter default
    synth_args: list = [],  # noqa: B006
    epochs: int = 30,
    checkpoint_root: str = CHECKPOINT_ROOT,
    gpu_type: str = GPU_TYPE,
    gpu_count: str = GPU_COUNT,
    model_name: str = "ssr-emg",
    min_accuracy: float = 0.5,
    margin: float = 0.0,
    p_value: float = 0.05,
    baseline_margin: float = 0.0,
) -> float:
    """Train and register a model.

    Args:
        data_uri: raw data (local path or ``s3://``) with train/val/test folders; empty means
            generate synthetic EMG in the preprocess step (``synth_args`` are its options).
        config_yaml: the YAML text of a config; empty means the embedded defaults.
        overrides: ``section.key=value`` overrides applied on top of the config.
        epochs: maximum training epochs (``training.num_epochs``).
        checkpoint_root: object-storage prefix (or folder); checkpoints go to
            ``<root>/<pipeline run id>`` so a retried training step resumes where the failed
            attempt stopped, and no other run's checkpoint is ever resumed.
        gpu_type, gpu_count: the accelerator the training step requests; the count is a string
            (``gpu_count='"2"'`` on the ``kfp`` command line).
        model_name: registered model name in the MLflow registry.
        min_accuracy: test accuracy below which nothing is registered (and the gate's minimum).
        margin, p_value: the promotion gate against the current champion.
        baseline_margin: test-accuracy gain required over the linear baseline
            (``registry.baseline_margin``).

    Returns:
        The test accuracy (the registered version is the register step's output).
    """
    prep = preprocess(
        data_uri=data_uri, config_yaml=config_yaml, overrides=overrides, synth_args=synth_args
    )
    prep.set_display_name("preprocess").set_cpu_request("2").set_memory_request("4Gi")
    prep.set_cpu_limit("4").set_memory_limit("8Gi").set_retry(2)
    prep.set_caching_options(False)  # a cache key of the data_uri string misses new files
    _with_secrets(prep, ["ssr-s3-credentials"])

    trainer = train(
        processed=prep.outputs["processed"],
        checkpoint_root=checkpoint_root,
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,  # alone, or the driver leaves it unresolved
        config_yaml=config_yaml,
        overrides=overrides,
        epochs=epochs,
    )
    trainer.set_display_name("train").set_caching_options(False)
    trainer.set_container_image(SSR_TRAIN_IMAGE)
    trainer.set_accelerator_type(gpu_type).set_accelerator_limit(gpu_count)
    trainer.set_cpu_request("4").set_cpu_limit("8")
    trainer.set_memory_request("16Gi").set_memory_limit("32Gi")
    trainer.set_retry(3, backoff_duration="60s", backoff_factor=2.0)
    kubernetes.empty_dir_mount(trainer, volume_name="dshm", mount_path="/dev/shm", medium="Memory")
    kubernetes.add_toleration(trainer, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
    _with_secrets(trainer, list(SECRETS))

    evaluation = evaluate(
        processed=prep.outputs["processed"],
        model=trainer.outputs["model"],
        config_yaml=config_yaml,
        overrides=overrides,
    )
    evaluation.set_display_name("evaluate").set_cpu_request("2").set_memory_request("4Gi")
    evaluation.set_cpu_limit("4").set_memory_limit("8Gi").set_retry(2)
    evaluation.set_caching_options(False)
    _with_secrets(evaluation, list(SECRETS))

    with dsl.If(evaluation.outputs["Output"] >= min_accuracy, name="accuracy-gate"):
        registration = register(
            processed=prep.outputs["processed"],
            model=trainer.outputs["model"],
            report=evaluation.outputs["report"],
            pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            config_yaml=config_yaml,
            overrides=overrides,
            model_name=model_name,
            min_accuracy=min_accuracy,
            margin=margin,
            p_value=p_value,
            baseline_margin=baseline_margin,
        )
        registration.set_display_name("register").set_cpu_request("1")
        registration.set_memory_request("2Gi").set_cpu_limit("2").set_memory_limit("4Gi")
        registration.set_retry(2).set_caching_options(False)  # idempotent per run id
        _with_secrets(registration, ["ssr-s3-credentials", "ssr-mlflow-credentials"])
    return evaluation.outputs["Output"]
