"""URIs that may carry credentials, redacted before they are printed or written (standard library only, so
that the config layer, the output checks and the tracking checks share it without importing each other)."""

from __future__ import annotations

import importlib.util
import re

from ray_rthpo.errors import ConfigError

#: MLflow store schemes that need a database layer (SQLAlchemy, Alembic: the full mlflow package).
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")

#: A URI's user-info (``s3://KEY:SECRET@bucket``), query parameters that carry secrets
#: (``?access_key=...&secret_key=...`` as pyarrow reads them, pre-signed ``X-Amz-Signature``), and AWS key
#: ids.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SECRET_PARAM = re.compile(
    r"(?P<name>[?&;](?:access[_-]?key(?:[_-]?id)?|secret(?:[_-]?(?:access[_-]?)?key)?|session[_-]?token|token|"
    r"password|passwd|sig|signature|credential|x-amz-credential|x-amz-signature|x-amz-security-token|"
    r"aws_access_key_id|aws_secret_access_key|aws_session_token|sas|account[_-]?key)=)(?P<value>[^&;#]*)",
    re.IGNORECASE)
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[0-9A-Z]{16}\b")


def _without_userinfo(uri: str) -> str:
    """``scheme://USER:SECRET@host/...`` -> ``scheme://***@host/...``. The secret may hold unescaped ``/``
    (AWS secret keys do): everything before the last ``@`` of the address is user-info when it holds a ``:``
    or no ``/``."""
    scheme = _SCHEME.match(uri)
    if scheme is None:
        return uri
    rest = uri[scheme.end():]
    end = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, end)
    if at < 0 or ("/" in rest[:at] and ":" not in rest[:at]):
        return uri
    return f"{scheme.group(0)}***@{rest[at + 1:]}"


def redact_uri(uri: str) -> str:
    """``uri`` with every credential it carries replaced by ``***`` (safe to print or write)."""
    text = _without_userinfo(uri)
    text = _SECRET_PARAM.sub(lambda m: f"{m['name']}***", text)
    return _AWS_KEY_ID.sub("***", text)



def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module blocked in sys.modules
        return False


def scheme(uri: str) -> str:
    """The URI's scheme (``file``, ``http``, ``sqlite``, ...); ``""`` for a plain path."""
    head, sep, _ = uri.partition(":")
    if not sep or len(head) == 1 or not head.replace("+", "").replace("-", "").replace(".", "").isalnum():
        return ""  # a plain path (C:\\ on Windows too)
    return head.lower().split("+", 1)[0]


def check_mlflow(uri: str, key: str = "tracking.mlflow") -> None:
    """Raise ConfigError, naming ``key``, for a URI with credentials in it, or unless MLflow (and for a
    database URI its database layer) can be imported; MLflow is not imported here."""
    if redact_uri(uri) != uri:
        raise ConfigError(f"{key} {redact_uri(uri)!r} holds credentials (shown as ***); they would be "
                          "written to config.yaml, Ray's experiment state and the console. Give the URI "
                          "without them, and the credentials in the environment: MLFLOW_TRACKING_USERNAME "
                          "and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) for a tracking server.")
    if not _installed("mlflow"):
        raise ConfigError(f"{key} is {uri!r}, but MLflow is not installed; pip install mlflow-skinny (or pip "
                          "install -e '.[tracking]'), or delete the tracking section to log nothing.")
    if scheme(uri) in DATABASE_SCHEMES:
        missing = [m for m in ("sqlalchemy", "alembic") if not _installed(m)]
        if missing:
            raise ConfigError(f"{key} is {uri!r}, a database store, which needs {' and '.join(missing)} (not "
                              "part of mlflow-skinny); pip install mlflow (the full package), or log to a "
                              "folder (tracking.mlflow: file:///abs/mlruns) or a tracking server.")


__all__ = ["DATABASE_SCHEMES", "check_mlflow", "redact_uri", "scheme"]
