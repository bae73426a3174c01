"""The paper's Table 1, reproduced: everything about it in one package, in three layers.

* ``config`` -- a workload config (``configs/table1/NAME.yaml``) and the two experiments it becomes; imports
  neither torch nor Ray (the config layer, like :mod:`ray_rthpo.experiment`)
* ``report`` -- what every number of the table means, the table and its figures: pure functions over the
  per-epoch results (no Ray, no files)
* ``run`` -- running both experiments on Ray Tune (:func:`ray_rthpo.table1.run.run_table1`) and writing the
  output folder; Ray is imported only when it runs

Nothing is imported here: ``import ray_rthpo.table1.config`` loads the config layer alone.
"""
