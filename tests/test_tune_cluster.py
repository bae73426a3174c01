"""A real two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``) runs ``rthpo compare``
with ``--address``; every node carries one ``trial_slot`` and every trial asks for one, so two trials
at once must land on two nodes. It runs in a subprocess: it cannot share the session's ``ray.init``."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml
from script_runner import run_isolated
from tune_helpers import tiny_experiment

pytestmark = pytest.mark.ray

SCRIPT = textwrap.dedent("""
    import json, subprocess, sys
    from ray.cluster_utils import Cluster

    config, out, result = sys.argv[1:4]
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"trial_slot": 1}, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1, resources={"trial_slot": 1})
        cluster.wait_for_nodes()
        node_ids = [node.node_id for node in cluster.list_all_nodes()]
        cli = "from ray_rthpo.cli import main; raise SystemExit(main())"
        rc = subprocess.run([sys.executable, "-c", cli, "compare", config, "--address", cluster.address,
                             "--output", out], timeout=400).returncode
    finally:
        cluster.shutdown()
    with open(result, "w") as fh:
        json.dump({"rc": rc, "node_ids": node_ids}, fh)
""")


def test_comparison_trials_spread_over_two_nodes(tmp_path: Path) -> None:
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump(tiny_experiment(
        {"name": "spread", "searcher": "random", "num_samples": 4,
         "space": {"lr.eta0": {"loguniform": [0.01, 1.0]}}},
        {"name": "grid", "searcher": "grid", "space": {"lr.eta0": {"grid": [0.1, 0.3]}}},
        resources={"cpu": 1, "custom": {"trial_slot": 1}})))
    script, out, result = tmp_path / "cluster.py", tmp_path / "out", tmp_path / "result.json"
    script.write_text(SCRIPT)
    # in a session of its own, output to files: on a timeout the whole group (the script, its CLI and the
    # cluster's Ray processes) is killed (tests/script_runner.py: run_isolated)
    done = run_isolated([sys.executable, str(script), str(config), str(out), str(result)], timeout=480,
                        log=tmp_path / "cluster")
    printed = done.stdout + done.stderr
    assert result.is_file(), printed[-6000:]
    outcome = json.loads(result.read_text())
    assert outcome["rc"] == 0, printed[-6000:]
    assert "2 node(s)" in done.stdout, printed[-6000:]
    trials = pd.read_csv(out / "trials.csv")
    per_trial = trials.groupby("trial_id")["node/id"].nunique()
    assert (per_trial == 1).all()  # a trial stays on its node
    used = set(trials["node/id"])
    assert used == set(outcome["node_ids"]) and len(used) == 2, (used, outcome["node_ids"])
    assert set(trials["strategy"]) == {"spread", "grid"}
    assert (out / "summary.md").is_file() and (out / "best_so_far.png").is_file()
