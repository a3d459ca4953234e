"""The training pipeline: preprocess -> (tune) -> train -> evaluate -> (gate) ->
register/promote -> (promoted) deploy.

Compile with ``make pipeline`` (see :mod:`pipelines.compile`); run on this machine with
``make run-local`` (see :mod:`pipelines.run_local`).

Written for what the KFP backend (2.14 and later; see README.md for 2.5) does with the compiled
YAML, not only for ``kfp.local``:

* the job-id placeholder is substituted only in a parameter that is exactly the placeholder, so
  the train step receives the checkpoint root and the run id separately and joins them;
* the driver reads the accelerator count as a string value, so ``gpus_per_node`` is a string;
* with ``num_nodes`` > 1 the train step is a small launcher pod that runs the training as a
  Kubeflow Trainer TrainJob: ``dsl.If(num_nodes == 1)`` / ``dsl.Else()`` pick the GPU task or
  the launcher, each followed by evaluate and the gated register (not a ``dsl.OneOf`` of the
  two models, which ``kfp.local`` cannot resolve for artifacts);
* the tune step (``tune_trials`` > 0) searches hyper-parameters as a Katib Experiment and its
  best values extend the train step's overrides; with 0 trials (the default) it skips itself
  and returns none, so one compiled pipeline serves both (not a ``dsl.If``: the train task
  must consume the step's output in both cases);
* a ``dsl.ExitHandler`` deletes the run's Katib Experiment and TrainJob however the run ends;
* caching is off for every step: preprocess would be keyed on the ``data_uri`` string, not on
  the data behind it; train, evaluate and register write to object storage and MLflow;
* retries of tasks inside ``dsl.If`` are honoured from KFP 2.14 on; register is idempotent per
  run, so a retry (or a re-run) registers nothing twice;
* deploy follows register and acts only when register promoted the version: it rolls the
  KServe InferenceService to the champion by a canary (``ssr deploy``), resumes an interrupted
  rollout on a retry, and skips itself where there is no cluster (``kfp.local``).
"""

import json
import os
from pathlib import Path
from typing import Any

from kfp import dsl, kubernetes

from components import (
    cleanup_run,
    deploy,
    evaluate,
    preprocess,
    register,
    train,
    train_distributed,
    tune,
)
from components.image import SSR_TRAIN_IMAGE
from ssr.cluster.katib import DEFAULT_DEADLINE_SECONDS as TUNE_DEADLINE_SECONDS
from ssr.cluster.secrets import MLFLOW, OPTIONAL, S3, SECRETS
from ssr.cluster.trainjob import DEFAULT_DEADLINE_SECONDS
from ssr.config import RegistryConfig
from ssr.yaml_io import yaml_load

PIPELINE_NAME = "ssr-emg-training"
# Compile-time defaults for the GPU request; both stay run parameters of the pipeline. The count
# is a string: the KFP driver resolves an accelerator count only from a string parameter value.
GPU_TYPE = os.environ.get("SSR_GPU_TYPE", "nvidia.com/gpu")
GPUS_PER_NODE = os.environ.get("SSR_GPUS_PER_NODE", "1")
# Writable by every S3 key a KFP install hands out: the standalone MinIO key and, from KFP 2.15,
# the per-profile keys (which may write shared/, artifacts/ and private/<namespace>/).
CHECKPOINT_ROOT = "s3://mlpipeline/shared/ssr-checkpoints"
# The gate's defaults are the typed config's (one source: ssr.config.RegistryConfig).
REGISTRY = RegistryConfig()
INFERENCE_SERVICE = "ssr-emg"  # k8s/kserve
CANARY_PERCENT = 10
# The hyper-parameter search: off unless a run (or the compile, SSR_TUNE_TRIALS) asks for
# trials; its space defaults to configs/tune_space.yaml as it is when the pipeline is compiled,
# on one line as JSON (which is YAML): the compiler copies a default into a comment at the top
# of the file, where a second line would break the YAML.
TUNE_TRIALS = int(os.environ.get("SSR_TUNE_TRIALS") or 0)
TUNE_PARALLEL_TRIALS = 2
_SPACE_FILE = Path(__file__).resolve().parents[1] / "configs" / "tune_space.yaml"
TUNE_SPACE = json.dumps(yaml_load(_SPACE_FILE.read_text())) if _SPACE_FILE.is_file() else ""


def _with_secrets(task: dsl.PipelineTask, names: list[str]) -> dsl.PipelineTask:
    for name in names:
        kubernetes.use_secret_as_env(task, name, SECRETS[name], optional=name in OPTIONAL)
    return task


def _with_namespace(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """``SSR_NAMESPACE``: the run's namespace (the TrainJob's, and the InferenceService's when
    the deploy step is given none)."""
    kubernetes.use_field_path_as_env(task, "SSR_NAMESPACE", "metadata.namespace")
    return task


def _evaluate_and_register(
    model: Any,  # the train task's model output (a pipeline channel)
    prep: dsl.PipelineTask,
    config_yaml: str,
    overrides: list,
    model_name: str,
    min_accuracy: float,
    margin: float,
    p_value: float,
    baseline_margin: float,
    inference_service: str,
    inference_service_namespace: str,
    canary_percent: int,
) -> None:
    """evaluate, then register inside ``dsl.If(test accuracy >= min_accuracy)``, then deploy
    (which acts only when register promoted)."""
    evaluation = evaluate(
        processed=prep.outputs["processed"],
        model=model,
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
            model=model,
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
        _with_secrets(registration, [S3, MLFLOW])

        # Not a dsl.If on `promoted`: kfp.local (2.17) resolves a condition on a task output
        # only when the output is named Output, so the deploy task would never run locally;
        # the step itself does nothing unless register promoted the version.
        deployment = deploy(
            processed=prep.outputs["processed"],
            version=registration.outputs["version"],
            promoted=registration.outputs["promoted"],
            model_name=model_name,
            inference_service=inference_service,
            namespace=inference_service_namespace,
            canary_percent=canary_percent,
            config_yaml=config_yaml,
            overrides=overrides,
        )
        deployment.set_display_name("deploy").set_cpu_request("250m")
        deployment.set_memory_request("1Gi").set_cpu_limit("1").set_memory_limit("2Gi")
        deployment.set_retry(2).set_caching_options(False)  # resumes, writes nothing twice
        _with_secrets(deployment, [MLFLOW])
        _with_namespace(deployment)  # an empty namespace parameter: the run's own


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Silent speech recognition from EMG: preprocess, train, evaluate, register.",
)
def training_pipeline(
    data_uri: str = "",
    config_yaml: str = "",
    overrides: list = [],  # noqa: B006 - KFP parameter default
    synth_args: list = [],  # noqa: B006
    epochs: int = 0,
    checkpoint_root: str = CHECKPOINT_ROOT,
    gpu_type: str = GPU_TYPE,
    gpus_per_node: str = GPUS_PER_NODE,
    num_nodes: int = 1,
    trainjob_deadline_seconds: int = DEFAULT_DEADLINE_SECONDS,
    model_name: str = REGISTRY.model_name,
    min_accuracy: float = REGISTRY.min_accuracy,
    margin: float = REGISTRY.margin,
    p_value: float = REGISTRY.p_value,
    baseline_margin: float = REGISTRY.baseline_margin or 0.0,
    inference_service: str = INFERENCE_SERVICE,
    inference_service_namespace: str = "",
    canary_percent: int = CANARY_PERCENT,
    tune_trials: int = TUNE_TRIALS,
    tune_parallel_trials: int = TUNE_PARALLEL_TRIALS,
    tune_space_yaml: str = TUNE_SPACE,
    tune_deadline_seconds: int = TUNE_DEADLINE_SECONDS,
) -> None:
    """Train and register a model.

    Args:
        data_uri: raw data (local path or ``s3://``) with train/val/test folders; empty means
            generate synthetic EMG in the preprocess step (``synth_args`` are its options).
        config_yaml: the YAML text of a config; empty means the embedded defaults.
        overrides: ``section.key=value`` overrides applied on top of the config.
        epochs: maximum training epochs; 0 keeps the config's ``training.num_epochs``.
        checkpoint_root: object-storage prefix (or folder); checkpoints go to
            ``<root>/<pipeline run id>`` so a retried training step resumes where the failed
            attempt stopped, and no other run's checkpoint is ever resumed.
        gpu_type, gpus_per_node: the accelerator each training node requests; the count is a
            string (``gpus_per_node='"2"'`` on the ``kfp`` command line).
        num_nodes: training nodes; more than 1 runs the training as a Kubeflow Trainer v2
            TrainJob (runtime ``torch-distributed``, ``checkpoint_root`` must be ``s3://``).
        trainjob_deadline_seconds: ``activeDeadlineSeconds`` of that TrainJob.
        model_name: registered model name in the MLflow registry.
        min_accuracy: test accuracy below which nothing is registered (and the gate's minimum).
        margin, p_value: the promotion gate against the current champion.
        baseline_margin: test-accuracy gain required over the linear baseline
            (``registry.baseline_margin``); negative skips the baseline check.
        inference_service, inference_service_namespace: the KServe InferenceService a promoted
            champion is deployed to (k8s/kserve); an empty namespace is the run's own.
        canary_percent: the new revision's share of the traffic during its smoke test.
        tune_trials: trials of the hyper-parameter search before training (a Katib
            Experiment; ``checkpoint_root`` must be ``s3://``); 0 trains the config as given.
        tune_parallel_trials: trials at a time, each with the train step's accelerators.
        tune_space_yaml: the search space (the YAML of ``ssr tune --space``; the default is
            configs/tune_space.yaml as JSON).
        tune_deadline_seconds: the search stops then, keeping its best trial so far.

    The test accuracy is the evaluate step's output, the registered version the register
    step's.
    """
    cleanup = cleanup_run(
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, num_nodes=num_nodes, tune_trials=tune_trials
    )
    cleanup.set_display_name("cleanup").set_caching_options(False)
    cleanup.set_cpu_request("100m").set_memory_request("256Mi")
    cleanup.set_cpu_limit("500m").set_memory_limit("1Gi").set_retry(2)
    _with_namespace(cleanup)
    # Every task runs inside the exit handler, whose cleanup deletes the run's Katib Experiment
    # and TrainJob however the run ends (failed, cancelled, done). KFP allows no pipeline
    # output from inside it, so the pipeline returns nothing: the test accuracy is evaluate's
    # output and metrics.
    gate = {
        "config_yaml": config_yaml,
        "overrides": overrides,
        "model_name": model_name,
        "min_accuracy": min_accuracy,
        "margin": margin,
        "p_value": p_value,
        "baseline_margin": baseline_margin,
        "inference_service": inference_service,
        "inference_service_namespace": inference_service_namespace,
        "canary_percent": canary_percent,
    }
    # evaluate and register follow the train task inside each branch: kfp.local (2.17) resolves
    # dsl.OneOf only for parameters ("Expected 1 artifact in ArtifactSelectorSpec"), so a
    # OneOf of the two model artifacts after the branches would not run in `make run-local`.
    with dsl.ExitHandler(cleanup, name="run"):
        prep = preprocess(
            data_uri=data_uri, config_yaml=config_yaml, overrides=overrides, synth_args=synth_args
        )
        prep.set_display_name("preprocess").set_cpu_request("2").set_memory_request("4Gi")
        prep.set_cpu_limit("4").set_memory_limit("8Gi").set_retry(2)
        prep.set_caching_options(False)  # a cache key of the data_uri string misses new files
        _with_secrets(prep, [S3])

        # Skips itself with 0 trials; else waits for the search (a retry re-attaches to it).
        tuner = tune(
            processed=prep.outputs["processed"],
            checkpoint_root=checkpoint_root,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            image=SSR_TRAIN_IMAGE,
            trials=tune_trials,
            parallel_trials=tune_parallel_trials,
            space_yaml=tune_space_yaml,
            gpu_type=gpu_type,
            gpus_per_trial=gpus_per_node,
            deadline_seconds=tune_deadline_seconds,
            config_yaml=config_yaml,
            overrides=overrides,
            epochs=epochs,
        )
        tuner.set_display_name("tune").set_caching_options(False)
        tuner.set_cpu_request("250m").set_cpu_limit("1")
        tuner.set_memory_request("1Gi").set_memory_limit("2Gi")
        tuner.set_retry(3, backoff_duration="60s", backoff_factor=2.0)
        _with_secrets(tuner, [S3])  # the config and data probe; the trials get all three
        _with_namespace(tuner)

        with dsl.If(num_nodes == 1, name="single-node"):
            trainer = train(
                processed=prep.outputs["processed"],
                checkpoint_root=checkpoint_root,
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,  # alone, or the driver leaves it as is
                config_yaml=config_yaml,
                overrides=overrides,
                epochs=epochs,
                tuned_overrides=tuner.output,
            )
            trainer.set_display_name("train").set_caching_options(False)
            trainer.set_container_image(SSR_TRAIN_IMAGE)
            trainer.set_accelerator_type(gpu_type).set_accelerator_limit(gpus_per_node)
            # The compiler does not plumb channels used only in resource settings through the
            # enclosing dsl.If / ExitHandler groups (the driver and kfp.local would miss them):
            # register them as the task's inputs.
            trainer.register_pipeline_channels([gpu_type, gpus_per_node])
            trainer.set_cpu_request("4").set_cpu_limit("8")
            trainer.set_memory_request("16Gi").set_memory_limit("32Gi")
            trainer.set_retry(3, backoff_duration="60s", backoff_factor=2.0)
            kubernetes.empty_dir_mount(
                trainer, volume_name="dshm", mount_path="/dev/shm", medium="Memory"
            )
            kubernetes.add_toleration(
                trainer, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule"
            )
            _with_secrets(trainer, list(SECRETS))
            _evaluate_and_register(trainer.outputs["model"], prep, **gate)
        with dsl.Else(name="multi-node"):
            launcher = train_distributed(
                processed=prep.outputs["processed"],
                checkpoint_root=checkpoint_root,
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                image=SSR_TRAIN_IMAGE,
                num_nodes=num_nodes,
                gpus_per_node=gpus_per_node,
                config_yaml=config_yaml,
                overrides=overrides,
                epochs=epochs,
                deadline_seconds=trainjob_deadline_seconds,
                tuned_overrides=tuner.output,
            )
            # Waits for the TrainJob; a retry re-attaches to the job instead of starting another.
            launcher.set_display_name("train-trainjob").set_caching_options(False)
            launcher.set_cpu_request("250m").set_cpu_limit("1")
            launcher.set_memory_request("1Gi").set_memory_limit("2Gi")
            launcher.set_retry(3, backoff_duration="60s", backoff_factor=2.0)
            _with_secrets(launcher, [S3])  # probe, config and best model; nodes get all three
            _with_namespace(launcher)
            _evaluate_and_register(launcher.outputs["model"], prep, **gate)
