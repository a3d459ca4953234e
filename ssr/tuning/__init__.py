"""Hyper-parameter search: ``ssr tune`` runs an Optuna study whose trials are ``ssr train`` runs.

:mod:`ssr.tuning.space` reads and checks the YAML search space; :mod:`ssr.tuning.study` runs
the study (sampler, pruning, storage, tracking, the best config); :mod:`ssr.tuning.trial` is
one trial. See docs/tuning.md.
"""
