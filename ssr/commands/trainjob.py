"""``ssr trainjob launch | delete | node``: multi-node training as a Kubeflow Trainer TrainJob."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from ssr.cluster.launcher import TrainJobs, current_namespace, launch
from ssr.cluster.node import run_node as node
from ssr.cluster.trainjob import (
    DEFAULT_DEADLINE_SECONDS,
    build_trainjob,
    job_name,
    validate_trainjob,
)

log = logging.getLogger(__name__)


def _target(parser: argparse.ArgumentParser) -> None:
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--run-id", help="pipeline run id; the job is named after it")
    who.add_argument("--name", help="the TrainJob's name (instead of --run-id)")
    parser.add_argument("--namespace", "-n", default=None, help="default: the current one")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "trainjob",
        help="multi-node training as a Kubeflow Trainer v2 TrainJob",
        description="Run `torchrun -m ssr train --resume auto` on several nodes through "
        "Kubeflow Trainer v2 (runtime torch-distributed).",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    launch = sub.add_parser(
        "launch",
        help="create (or re-attach to) the run's TrainJob and wait for it",
        description="Create the TrainJob of a run, or attach to the one an earlier attempt "
        "created (a Failed one is recreated; --resume auto continues from the checkpoints), "
        "print node 0's log, and fail with the job's message if it fails. Training arguments "
        "(section.key=value overrides) follow `--`; training.checkpoint_dir and "
        "data.processed_dir must be s3:// URIs the nodes can read.",
    )
    _target(launch)
    launch.add_argument("--image", required=True, help="the training image (CUDA)")
    launch.add_argument("--num-nodes", type=int, required=True)
    launch.add_argument("--gpus-per-node", type=int, default=1, help="one process per GPU")
    launch.add_argument("--config-uri", default="", help="config file the nodes read (s3://)")
    launch.add_argument(
        "--deadline",
        type=int,
        default=DEFAULT_DEADLINE_SECONDS,
        help="activeDeadlineSeconds of the job (default: %(default)s)",
    )
    launch.add_argument("--cpu", default="8", help="CPU per node (request = limit)")
    launch.add_argument("--memory", default="32Gi", help="memory per node (request = limit)")
    launch.add_argument("--shm-size", default="8Gi", help="size of /dev/shm per node")
    launch.add_argument(
        "--poll",
        type=float,
        default=float(os.environ.get("SSR_TRAINJOB_POLL_SECONDS") or 10.0),
        help="seconds between checks (default: $SSR_TRAINJOB_POLL_SECONDS or 10)",
    )
    launch.add_argument(
        "--timeout", type=float, default=None, help="give up waiting (default: deadline + 1 h)"
    )
    launch.add_argument("--dry-run", action="store_true", help="print the body, create nothing")
    launch.add_argument("train_args", nargs="*", metavar="-- section.key=value")
    launch.set_defaults(func=run_launch)

    delete = sub.add_parser("delete", help="delete a run's TrainJob (absent is fine)")
    _target(delete)
    delete.add_argument("--wait", type=float, default=0.0, help="seconds to wait until gone")
    delete.set_defaults(func=run_delete)

    node = sub.add_parser(
        "node",
        help="what each TrainJob node runs: wait for the master, then torchrun ssr train",
        description="Inside a Trainer torch node: wait until $PET_MASTER_ADDR resolves, fetch "
        "--config-uri, then exec torchrun ... -m ssr train ARGS --resume auto.",
    )
    node.add_argument("--config-uri", default="")
    node.add_argument("--master-timeout", type=float, default=600.0)
    node.add_argument("--rendezvous-timeout", type=int, default=900)
    node.add_argument("train_args", nargs="*", metavar="-- section.key=value")
    node.set_defaults(func=run_node)


def _name(args: argparse.Namespace) -> str:
    return args.name or job_name(args.run_id)


def _namespace(args: argparse.Namespace) -> str:
    return args.namespace or current_namespace()


def run_launch(args: argparse.Namespace) -> int:
    body = build_trainjob(
        _name(args),
        _namespace(args),
        args.image,
        args.num_nodes,
        args.gpus_per_node,
        args.train_args,
        config_uri=args.config_uri,
        run_id=args.run_id or "",
        deadline_seconds=args.deadline,
        cpu=args.cpu,
        memory=args.memory,
        shm_size=args.shm_size,
    )
    if args.dry_run:
        validate_trainjob(body)
        print(json.dumps(body, indent=2))
        return 0
    timeout = args.timeout if args.timeout is not None else args.deadline + 3600.0

    def sink(line: str) -> None:
        print(f"[node-0] {line}", flush=True)

    launch(
        TrainJobs(body["metadata"]["namespace"]), body, poll=args.poll, timeout=timeout, sink=sink
    )
    return 0


def run_delete(args: argparse.Namespace) -> int:
    name, namespace = _name(args), _namespace(args)
    if TrainJobs(namespace).delete(name, wait=args.wait):
        log.info("deleted TrainJob %s/%s", namespace, name)
    else:
        log.info("no TrainJob %s/%s", namespace, name)
    return 0


def run_node(args: argparse.Namespace) -> int:
    sys.stdout.flush()
    node(args.train_args, args.config_uri, args.master_timeout, args.rendezvous_timeout)
    return 0  # not reached: the process became torchrun
