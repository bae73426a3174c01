"""Ray Tune adapter layer: searchers, stoppers and trainables that Ray runs.

Import what you need from its modules; this package imports nothing itself, so
``import ray_rthpo.tune`` stays cheap:

* ``trainable`` -- ``train_fn``, the Tune function trainable (the only module that reports to Tune)
* ``skopt_search`` -- ``SkOptSearch``, scikit-optimize BO as a Ray ``Searcher``
* ``budget`` -- ``ComputeBudgetStopper``, ends an experiment when the trials' compute is spent
* ``spaces``, ``searchers`` -- YAML search spaces -> Ray domains; searcher factories by name
* ``experiment_config``, ``data_paths`` -- the experiment YAML (base run, budget, strategies)
* ``runner``, ``compare``, ``analysis`` -- one strategy as one Tune experiment; several at equal
  compute; pure selection/summary/plot functions over the results table
* ``commands`` -- the ``rthpo run`` and ``rthpo compare`` subcommands
"""
