"""Several GPUs per node, tested without one: the device a trial trains on (pure mapping), and a real
local Ray with two logical GPUs scheduling fractional-GPU trials four at a time (in a subprocess, so
that it does not disturb the session's CPU-only Ray)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from script_runner import run_isolated

from ray_rthpo.errors import ConfigError
from ray_rthpo.tune.trainable import trial_device

REPO = Path(__file__).resolve().parents[1]

MAPPING = [
    # requested, gpu ids, CUDA_VISIBLE_DEVICES, cuda available, device count -> device
    ("auto", [], None, True, 2, "cpu"),          # no GPU assigned: auto never takes one
    ("auto", ["1"], "1", True, 1, "cuda:0"),     # Ray narrowed the visible devices to the assigned one
    ("cuda", ["1"], "1", True, 1, "cuda:0"),
    ("auto", [1], None, True, 2, "cuda:1"),      # visible devices not narrowed: the id itself
    ("auto", ["0"], "", True, 2, "cuda:0"),
    ("cpu", ["1"], "1", True, 1, "cpu"),         # the config says cpu: the GPU share is left unused
    ("auto", ["0"], "0", False, 0, "cpu"),       # a logical GPU without CUDA: auto runs on the CPU
]


@pytest.mark.parametrize(("requested", "ids", "visible", "cuda", "count", "expected"), MAPPING)
def test_the_trial_device_follows_the_gpu_ray_assigned(requested: str, ids: list, visible: str | None,
                                                       cuda: bool, count: int, expected: str) -> None:
    assert trial_device(requested, ids, visible, cuda, count) == expected


def test_cuda_without_a_usable_gpu_fails_with_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"Ray gave this trial no GPU; ask for one with resources.gpu"):
        trial_device("cuda", [], None, True, 2)
    with pytest.raises(ConfigError, match=r"Ray gave it GPU \['0'\] but CUDA is absent.*cpu_fallback"):
        trial_device("cuda", ["0"], "0", False, 0)
    with pytest.raises(ConfigError, match=r"assigned GPU 3, but this process sees only 2"):
        trial_device("auto", [3], None, True, 2)


SCRIPT = textwrap.dedent('''
    import json, os, sys, time
    import ray
    from ray import tune
    from ray_rthpo.tune.trainable import trial_device

    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)

    def trial(config):
        import torch
        ids = ray.get_gpu_ids()
        start = time.time()
        time.sleep(6.0)  # longer than the actors take to start, so all four overlap
        tune.report({"start": start, "end": time.time(), "ids": ",".join(map(str, ids)),
                     "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                     "device": trial_device("auto", ids, os.environ.get("CUDA_VISIBLE_DEVICES"),
                                            torch.cuda.is_available())})

    results = tune.Tuner(tune.with_resources(trial, {"cpu": 0.25, "gpu": 0.5}),
                         tune_config=tune.TuneConfig(num_samples=8),
                         run_config=tune.RunConfig(storage_path=sys.argv[1], name="gpus", verbose=0)).fit()
    rows = [r.metrics for r in results]
    keys = ("start", "end", "ids", "visible", "device")
    print("@@ROWS " + json.dumps([{k: r[k] for k in keys} for r in rows]))

    # The comparison machinery on the same Ray: trials ask for half a GPU; cpu_fallback decides.
    from pathlib import Path
    from ray_rthpo.experiment.config import experiment_from_dict
    from ray_rthpo.tune.compare import run_comparison
    base = {"data": {"name": "digits", "batch_size": 64}, "model": {"name": "mlp", "hidden": [16]},
            "lr": {"method": "fixed", "eta0": 0.1}, "train": {"epochs": 1}}
    for fallback in (True, False):
        exp = experiment_from_dict({"name": "g", "base": base, "budget_s": 100.0, "max_concurrent": 2,
                                    "resources": {"cpu": 0.5, "gpu": 0.5, "cpu_fallback": fallback},
                                    "max_failures": 0,
                                    "strategies": [{"name": "one", "searcher": "random", "num_samples": 2}]})
        out = Path(sys.argv[1]) / f"compare-{fallback}"
        try:
            result = run_comparison(exp, out, progress=lambda line: None)
            table = result.trials
            seen = {"devices": sorted(set(table["device"])),
                    "gpu_ids": sorted(set(map(str, table["node/gpu_ids"])))}
            print(f"@@COMPARE {fallback} " + json.dumps(seen))
        except Exception as err:
            print(f"@@COMPARE {fallback} FAILED " + json.dumps(str(err)))
''')


@pytest.mark.ray
@pytest.mark.slow
def test_fractional_gpu_trials_run_four_at_a_time_on_two_logical_gpus(tmp_path: Path) -> None:
    done = run_isolated([sys.executable, "-c", SCRIPT, str(tmp_path)], timeout=400, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    marked = {line.split(" ", 1)[0] + (" " + line.split(" ")[1] if line.startswith("@@COMPARE") else ""): line
              for line in done.stdout.splitlines() if line.startswith("@@")}
    rows = json.loads(marked["@@ROWS"].split(" ", 1)[1])
    assert len(rows) == 8
    # 8 trials of 6 s, half a GPU each on 2 GPUs: at most 4 at once, and 4 at once at some moment
    events = sorted([(r["start"], 1) for r in rows] + [(r["end"], -1) for r in rows])
    running, peak = 0, 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    assert peak == 4
    for r in rows:
        # told its GPU, and only that one is visible
        assert r["ids"] in ("0", "1") and r["visible"] == r["ids"]
        assert r["device"] == "cpu"  # logical GPUs, no CUDA here: auto trains on the CPU
    for gpu in ("0", "1"):  # never more than two trials share one GPU
        mine = [r for r in rows if r["ids"] == gpu]
        assert all(sum(o["start"] < r["end"] and r["start"] < o["end"] for o in mine) <= 2 for r in mine)
    # resources.cpu_fallback true: the trials take their GPU share and train on the CPU; false: they fail
    # with the fix instead of quietly training on the CPU
    fallback = json.loads(marked["@@COMPARE True"].split(" ", 2)[2])
    assert fallback["devices"] == ["cpu"] and set(fallback["gpu_ids"]) <= {"0", "1"}
    refused = marked["@@COMPARE False"]
    assert refused.startswith("@@COMPARE False FAILED ")
    assert "CUDA is absent" in refused and "cpu_fallback" in refused
