"""Ray Tune adapter layer: searchers, stoppers and trainables that Ray runs.

Import what you need from its modules (``ray_rthpo.tune.skopt_search``, ``ray_rthpo.tune.budget``);
this package imports nothing itself, so ``import ray_rthpo.tune`` stays cheap.
"""
