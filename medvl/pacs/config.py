"""How to reach a DICOMweb server: URL, credentials, TLS, timeouts and limits.

Credentials come from the environment or from a config file, never from the command
line (it shows in ``ps`` and shell history) and never from the URL. They are held in
:class:`Secret`, whose ``repr``/``str`` print ``***``, so a config that ends up in a log
line or a traceback shows no password or token.

Environment variables (they override the file):

=========================  ===============================================
``MEDVL_PACS_URL``         the DICOMweb root, e.g. ``https://pacs/dicom-web``
``MEDVL_PACS_USERNAME``    HTTP basic user
``MEDVL_PACS_PASSWORD``    HTTP basic password
``MEDVL_PACS_TOKEN``       bearer token (OAuth2 / OIDC access token)
``MEDVL_PACS_CA_BUNDLE``   a CA certificate file for a hospital's own CA
``MEDVL_PACS_CONFIG``      the config file (YAML or JSON) read when no path is given
=========================  ===============================================

The config file holds the same keys as :class:`PacsConfig` (``url``, ``username``,
``password``, ``token``, ``verify``, ``ca_bundle``, ``timeout``, ``workers``, ...).
"""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from typing_extensions import Self

from medvl.errors import ConfigError

AuthKind = Literal["none", "basic", "bearer"]
ENV_PREFIX = "MEDVL_PACS_"
SECRET_FIELDS = ("password", "token")


class Secret(str):
    """A string that never prints itself (``repr``/``str``/format show ``***``).

    The value is reached with :meth:`reveal`, only where a request is signed.
    """

    def __new__(cls, value: str) -> Self:
        obj = super().__new__(cls, "***")
        obj._value = value  # type: ignore[attr-defined]
        return obj

    def reveal(self) -> str:
        """The secret itself."""
        return self._value  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return "Secret('***')"

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (Secret, (self._value,))  # type: ignore[attr-defined]


@dataclass
class PacsConfig:
    """A DICOMweb server and how to talk to it.

    Attributes:
        url: the DICOMweb root (QIDO/WADO/STOW below it), ``http(s)://host[:port]/path``.
        username: HTTP basic user (with ``password``).
        password: HTTP basic password (a :class:`Secret`).
        token: bearer token (a :class:`Secret`); exclusive with basic credentials.
        verify: verify the server's TLS certificate (on by default; switching it off
            is allowed for a lab server only and warns).
        ca_bundle: a CA file to verify against instead of the system store.
        timeout: seconds to wait for the server to connect or send data.
        retries: extra attempts after a 408/429/503/504 answer or a dropped connection.
        workers: instances fetched concurrently.
        max_instances: refuse (skip) a study whose chosen series has more instances.
        max_study_mb: stop fetching (skip) a study whose data passes this size.
        page_size: studies asked for per QIDO request.
        store: the viewer may offer to store an exported SR on this server (STOW-RS);
            off by default, and even then it is sent only when the user asks.
    """

    url: str = ""
    username: str | None = None
    password: str | None = None
    token: str | None = None
    verify: bool = True
    ca_bundle: str | None = None
    timeout: float = 30.0
    retries: int = 2
    workers: int = 4
    max_instances: int = 2000
    max_study_mb: float = 4096.0
    page_size: int = 100
    store: bool = False

    def __post_init__(self) -> None:
        for name in SECRET_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, Secret):
                setattr(self, name, Secret(str(value)))

    @property
    def auth(self) -> AuthKind:
        """Which authentication the requests carry."""
        if self.token:
            return "bearer"
        if self.username:
            return "basic"
        return "none"

    def check(self) -> PacsConfig:
        """Validate and return ``self``.

        Raises:
            ConfigError: no URL, a URL that is not http(s), credentials in the URL,
                both basic and bearer credentials, or a non-positive limit.
        """
        if not self.url:
            raise ConfigError("no DICOMweb URL", field="url",
                              expected=f"--url, {ENV_PREFIX}URL or 'url' in the PACS config file")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("not an http(s) URL", field="url", expected="http(s)://host[:port]/dicom-web")
        if parts.username or parts.password:
            # The URL is printed in messages; a password in it would be printed too.
            raise ConfigError("the URL carries credentials", field="url",
                              expected=f"credentials in {ENV_PREFIX}USERNAME/PASSWORD or TOKEN, or the config file")
        if self.token and (self.username or self.password):
            raise ConfigError("both a bearer token and basic credentials are set", field="token",
                              expected="one of them")
        if bool(self.username) != bool(self.password):
            raise ConfigError("basic authentication needs both a username and a password", field="username")
        for name in ("timeout", "workers", "max_instances", "max_study_mb", "page_size"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"must be positive, got {getattr(self, name)}", field=name)
        if self.retries < 0:
            raise ConfigError(f"must be >= 0, got {self.retries}", field="retries")
        if self.ca_bundle and not Path(self.ca_bundle).is_file():
            raise ConfigError("CA bundle not found", path=self.ca_bundle, field="ca_bundle")
        if not self.verify and parts.scheme == "https":
            warnings.warn("TLS certificate verification is off for the DICOMweb server: use it only "
                          "against a lab server, never across a hospital network", stacklevel=2)
        return self

    @property
    def display_url(self) -> str:
        """The URL as messages show it: scheme, host, port and path; no query string."""
        p = urlsplit(self.url)
        return f"{p.scheme}://{p.hostname}{f':{p.port}' if p.port else ''}{p.path}"

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in SECRET_FIELDS:
            shown[name] = "***" if shown[name] else None
        return "PacsConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


def _read_file(path: Path) -> dict[str, Any]:
    from medvl.config import from_dict, load_yaml

    if not path.is_file():
        raise ConfigError("PACS config file not found", path=path)
    data = load_yaml(path)  # YAML is a superset of JSON
    section = data.get("pacs", data) if isinstance(data, dict) else data
    if not isinstance(section, dict):
        raise ConfigError("not a mapping", path=path, expected="keys url, username, password, token, ...")
    if any(section.get(k) for k in SECRET_FIELDS) and os.name == "posix":
        mode = path.stat().st_mode
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            warnings.warn(f"{path} holds a password or token and is readable by other users; "
                          f"chmod 600 it", stacklevel=3)
    from_dict(PacsConfig, section, where="pacs")  # unknown keys and wrong types -> ConfigError
    return dict(section)


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, name in (("URL", "url"), ("USERNAME", "username"), ("PASSWORD", "password"),
                      ("TOKEN", "token"), ("CA_BUNDLE", "ca_bundle")):
        value = env.get(ENV_PREFIX + key)
        if value:
            out[name] = value
    store = env.get(ENV_PREFIX + "STORE", "").strip().lower()
    if store:
        if store not in ("1", "true", "yes", "0", "false", "no"):
            raise ConfigError(f"not a yes/no value: {store!r}", field=ENV_PREFIX + "STORE", expected="1 or 0")
        out["store"] = store in ("1", "true", "yes")
    return out


def load_pacs_config(
    config_file: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> PacsConfig:
    """Build the server settings from (in increasing priority) the config file, the
    environment and explicit ``overrides`` (command-line options; ``None`` values ignored).

    Args:
        config_file: YAML/JSON file; default ``$MEDVL_PACS_CONFIG`` when set.
        env: the environment (default ``os.environ``).
        overrides: field values, e.g. ``url=...``, ``timeout=5``.

    Raises:
        ConfigError: an unknown key, a wrong type, or settings :meth:`PacsConfig.check` refuses.
    """
    env = os.environ if env is None else env
    path = config_file or env.get(ENV_PREFIX + "CONFIG")
    values: dict[str, Any] = _read_file(Path(path)) if path else {}
    values.update(_from_env(env))
    known = {f.name for f in fields(PacsConfig)}
    for key, value in overrides.items():
        if key not in known:
            raise ConfigError(f"unknown PACS setting {key!r}", field=key, expected=", ".join(sorted(known)))
        if value is not None:
            values[key] = value
    return replace(PacsConfig(), **values).check()
