"""Run-time plumbing shared by the trainer (experiments/) and the evaluator (eval/).

Checkpoint layout and restore, XLA compile options, metric files. It lives below both so
that neither imports upward (layers: hpunet_jax <- datasets <- eval <- experiments).
"""
