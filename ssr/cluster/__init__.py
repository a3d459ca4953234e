"""Multi-node training on Kubernetes through Kubeflow Trainer v2 (``TrainJob``).

:mod:`ssr.cluster.secrets` names the Kubernetes Secrets the steps read credentials from,
:mod:`ssr.cluster.trainjob` builds (and validates) the TrainJob object, :mod:`ssr.cluster.node`
is what each training node runs, and :mod:`ssr.cluster.launcher` creates or re-attaches to the
job, follows it and deletes it. The CLI is ``ssr trainjob launch | delete | node``.
"""
