"""A head node that exposes nothing it need not: the cluster file binds the dashboard (which runs submitted
jobs, i.e. code) to 127.0.0.1, starts every node with Ray's token authentication, holds no credentials;
and a ``storage_path`` with credentials in it is refused before anything writes it. No Ray needed."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
import yaml

from ray_rthpo.errors import RTHPOError
from ray_rthpo.experiment.output import check_storage_path, redact_uri

REPO = Path(__file__).resolve().parents[1]
CLUSTERS = sorted((REPO / "configs" / "cluster").glob("*.yaml"))
START_KEYS = ("head_start_ray_commands", "worker_start_ray_commands")
#: Credentials that must never sit in a config file: AWS key ids and secrets, passwords, tokens, URIs with
#: user-info.
SECRETS = [
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"aws_(?:secret_)?access_key(?:_id)?\s*[:=]", re.IGNORECASE),
    # a path is fine
    re.compile(r"(?:secret|password|passwd|token)\w*\s*[:=]\s*(?![~/$])[^\s#;]+", re.IGNORECASE),
    re.compile(r"[a-z][a-z0-9+.-]*://[^/\s@]+:[^/\s@]+@", re.IGNORECASE),
]


def public_bindings(command: str) -> list[str]:
    """Addresses in ``command`` that listen beyond this host or its private network: 0.0.0.0, ::, public
    IPs."""
    found = []
    hosts = re.findall(r"--[\w-]*host[= ]+(\S+)", command)
    for value in hosts + re.findall(r"\b\d{1,3}(?:\.\d{1,3}){3}\b", command):
        value = value.strip("'\"")
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            continue  # a name (localhost) or an environment variable ($RAY_HEAD_IP)
        if (address.is_unspecified or address.is_global) and value not in found:
            found.append(value)
    return found


def test_public_bindings_are_found() -> None:
    assert public_bindings("ray start --head --dashboard-host=0.0.0.0") == ["0.0.0.0"]
    assert public_bindings("ray start --head --dashboard-host 8.8.8.8") == ["8.8.8.8"]
    assert public_bindings("ray start --address=$RAY_HEAD_IP:6379 --node-ip-address=10.0.0.4") == []
    assert public_bindings("ray start --head --dashboard-host=127.0.0.1") == []


@pytest.mark.parametrize("cluster", CLUSTERS, ids=[p.name for p in CLUSTERS])
def test_the_dashboard_listens_on_localhost_only_and_token_auth_is_on(cluster: Path) -> None:
    config = yaml.safe_load(cluster.read_text())
    for key in START_KEYS:
        for command in config.get(key, []):
            assert not public_bindings(command), (key, command)
            if "ray start" in command:
                # token authentication on, so a node without the token (or a job client) is refused
                assert "RAY_AUTH_MODE=token" in command, (key, command)
    head = " ".join(config["head_start_ray_commands"])
    assert re.search(r"--dashboard-host[= ](?:127\.0\.0\.1|localhost)\b", head), head
    for key in ("setup_commands", "initialization_commands", "head_setup_commands", "worker_setup_commands"):
        for command in config.get(key) or []:
            assert not public_bindings(command), (key, command)
    # the token reaches every node as a file copied from the machine that runs `ray up`, never as text here
    assert any(local.endswith(".ray/auth_token")
               for local in config["file_mounts"].values()), config["file_mounts"]


@pytest.mark.parametrize("path", CLUSTERS + sorted((REPO / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_configs_hold_no_credentials(path: Path) -> None:
    text = path.read_text()
    for pattern in SECRETS:
        assert not pattern.search(text), (path.name, pattern.pattern, pattern.search(text))
    data = yaml.safe_load(text)
    if isinstance(data, dict) and data.get("storage_path"):
        check_storage_path(data["storage_path"])


@pytest.mark.parametrize("uri,shown", [
    ("s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY@bucket/rthpo",
     "s3://***@bucket/rthpo"),
    ("s3://user@bucket/rthpo", "s3://***@bucket/rthpo"),
    ("s3://bucket/rthpo?access_key=A&secret_key=B/C&region=us-west-2",
     "s3://bucket/rthpo?access_key=***&secret_key=***&region=us-west-2"),
    ("https://host/p?X-Amz-Credential=x&X-Amz-Signature=y",
     "https://host/p?X-Amz-Credential=***&X-Amz-Signature=***"),
    ("gs://bucket/AKIAIOSFODNN7EXAMPLE/x", "gs://bucket/***/x"),
])
def test_a_storage_path_with_credentials_is_refused_and_never_shown(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown
    with pytest.raises(RTHPOError, match="holds credentials") as caught:
        check_storage_path(uri)
    assert shown in str(caught.value) and "instance profile" in str(caught.value)
    for secret in ("wJalrXUtnFEMI", "secret_key=B", "Signature=y", "AKIAIOSFODNN7EXAMPLE"):
        assert secret not in str(caught.value)


@pytest.mark.parametrize("uri", [None, "", "s3://my-bucket/rthpo", "/mnt/efs/rthpo",
                                 "s3://bucket/runs@2024/x",
                                 "s3://bucket/x?region=us-west-2&endpoint_override=localhost:9000"])
def test_a_storage_path_without_credentials_passes(uri: str | None) -> None:
    check_storage_path(uri)
    assert uri is None or redact_uri(uri) == uri


def test_the_readme_says_how_the_cluster_is_protected() -> None:
    text = (REPO / "README.md").read_text()
    clusters = text[text.index("## Clusters\n"):text.index("\n## ", text.index("## Clusters\n") + 1)]
    for needed in ("127.0.0.1", "RAY_AUTH_MODE=token", "ray get-auth-token --generate", "auth_token",
                   "instance profile"):
        assert needed in clusters, needed
    assert "--dashboard-host=0.0.0.0" not in clusters
