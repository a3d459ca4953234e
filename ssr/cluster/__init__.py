"""The project on Kubernetes: multi-node training through Kubeflow Trainer v2 (``TrainJob``),
hyper-parameter search through Katib (``Experiment``) and serving through KServe
(``InferenceService``).

:mod:`ssr.cluster.secrets` names the Kubernetes Secrets the steps read credentials from,
:mod:`ssr.cluster.trainjob` builds (and validates) the TrainJob object, :mod:`ssr.cluster.node`
is what each training node runs, and :mod:`ssr.cluster.launcher` creates or re-attaches to the
job, follows it and deletes it. The CLI is ``ssr trainjob launch | delete | node``.

:mod:`ssr.cluster.crd_schema` checks InferenceService bodies against KServe's CRD schema,
:mod:`ssr.cluster.inference_service` reads and replaces the InferenceService and its status,
:mod:`ssr.cluster.smoke` is the canary's smoke test, and :mod:`ssr.cluster.canary` rolls the
registry's champion out (canary, promotion or rollback of server and registry). The CLI is
``ssr deploy``.

:mod:`ssr.cluster.katib` builds (and validates) the Katib Experiment of a search,
:mod:`ssr.cluster.katib_trial` is what each trial runs, and :mod:`ssr.cluster.katib_launcher`
creates or re-attaches to it, follows it to its best trial and deletes it. The CLI is
``ssr katib launch | delete | trial``.
"""
