"""The Ray Tune examples of docs/tune.md run as written (tune.run and tune.Tuner), on the session's Ray; the
README's first command is the main job."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def section(title: str, doc: str = "docs/tune.md") -> str:
    text = (REPO / doc).read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_main_command_is_the_digits_comparison() -> None:
    first = (REPO / "README.md").read_text().split("```bash\n", 1)[1].splitlines()[0]
    assert first.startswith("pip install -e \".[tune]\" && rthpo compare configs/compare_digits.yaml")
    assert (REPO / "configs" / "compare_digits.yaml").is_file()


def test_readme_shows_before_it_tells() -> None:
    """At most ~250 lines: the two commands first (the tests' with its duration), then the main job's
    picture and result, near the top; the rest is in docs/ pages that exist."""
    text = (REPO / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 250, len(lines)
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert first_block[1].startswith('pip install -e ".[test]" && python -m pytest -q')
    assert re.search(r"\d+-\d+ min", first_block[1]), first_block[1]  # how long the tests take
    picture = next(i for i, line in enumerate(lines) if line.startswith("![") and "docs/img/" in line)
    result = lines.index("<!-- main-job-summary:start -->")
    assert picture < 40 and result < 80, (picture, result)
    for image in re.findall(r"!\[[^\]]*\]\((docs/img/[^)]+)\)", text):
        assert (REPO / image).stat().st_size < 100_000, image  # small pictures only


def test_relative_links_of_readme_and_docs_resolve() -> None:
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.relative_to(REPO)}: {target}"


@pytest.mark.ray
def test_docs_tune_run_and_tuner_examples_run(ray_local: None, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    blocks = python_blocks(section("From Python: `tune.run` and `tune.Tuner`"))
    assert len(blocks) == 2 and "tune.run(" in blocks[0] and "tune.Tuner(" in blocks[1]
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    try:
        for block in blocks:  # the second block continues the first, as a reader would run them
            exec(compile(block, "docs/tune.md", "exec"), namespace)
    finally:  # tune.with_resources(train_fn, ...) sets train_fn._resources; later tune.run calls refuse it
        from ray_rthpo.tune.trainable import train_fn

        vars(train_fn).pop("_resources", None)
    number = r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?"
    printed = [line for line in capsys.readouterr().out.splitlines()
               if re.fullmatch(rf"{number} {number} {number}", line.strip())]
    assert len(printed) == 2, printed  # the two print() calls of the examples
    for line in printed:
        eta0, beta, test_acc = (float(v) for v in line.split())
        # beta per sqrt(T) steps
        assert 1e-3 <= eta0 <= 1.0 and 0.1 <= beta <= 10.0 and 0.0 <= test_acc <= 1.0
    assert (tmp_path / "runs" / "ray" / "docs_tune_run").is_dir()
    assert (tmp_path / "runs" / "ray" / "docs_tuner").is_dir()


def test_cluster_config_is_valid_for_ray_up() -> None:
    import yaml
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    config = yaml.safe_load((REPO / "configs" / "cluster" / "aws-gpu.yaml").read_text())
    assert config["head_node_type"] in config["available_node_types"]
    assert "g5.xlarge" in str(config["available_node_types"])
    # the package (.[tune])
    assert any(re.search(r"pip install -e \"?\.", c) for c in config["setup_commands"])
    validate_config(fillout_defaults(config))  # what `ray up` checks; raises on a schema error
