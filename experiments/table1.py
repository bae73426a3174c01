"""The paper's Table 1 for one workload, through Ray Tune (the same as ``rthpo table1``).

    python experiments/table1.py --workload mlp_mnist --set train.epochs=5 --output runs/table1_mlp_mnist
    python experiments/table1.py --workload lenet_mnist --set train.epochs=2
    python experiments/table1.py --workload resnet18_cifar10 --address auto      # on a GPU cluster

Workloads are the YAML files in configs/table1/ (paper settings, the grids, the paper's numbers).
What each number means: ray_rthpo/table1/report.py. How the rows are run: ray_rthpo/table1/config.py
(the experiments) and ray_rthpo/table1/run.py (on Ray).
"""

from __future__ import annotations

import sys

from ray_rthpo.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["table1", *sys.argv[1:]]))
