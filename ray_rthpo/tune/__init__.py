"""Ray Tune adapter layer: searchers, stoppers and trainables that Ray runs.

Import what you need from its modules; this package imports nothing itself, so
``import ray_rthpo.tune`` stays cheap:

* ``trainable`` -- ``train_fn``, the Tune function trainable (the only module that reports to Tune);
  ``train_workers`` -- trials of ``resources.workers: N`` as a Ray Train ``TorchTrainer`` of N workers
* ``searchers`` -- searcher factories by name (``build_searcher``), YAML space kinds -> Ray domains
  (``to_domain``); ``skopt_search`` -- ``SkOptSearch``, scikit-optimize BO as a Ray ``Searcher``
* ``budget`` -- ``ComputeBudgetStopper``, ends an experiment when the trials' compute is spent;
  ``results`` -- values read out of Tune results
* ``runner`` -- one strategy as one Tune experiment; ``sequence`` -- several runs inside one Tune
  experiment; ``compare`` -- every strategy and seed at equal compute, and the output folder
* ``checkpoints`` -- trial checkpoints a killed driver resumes from; ``tracking`` -- an MLflow run per trial

The experiment config, search spaces and output folder are :mod:`ray_rthpo.experiment`; selection,
summaries and plots :mod:`ray_rthpo.report`; the ``rthpo run`` and ``rthpo compare`` subcommands
:mod:`ray_rthpo.cli.experiments`.
"""
