"""What ``imgcls serve`` checks before it starts the server: bundles to serve, and ports it can bind.

Each failure raises an error whose message says what to fix, before uvicorn starts, so the command
line prints it as one line with exit code 2 rather than as a failed start-up in the log. The
service itself still checks the repository when it starts (``uvicorn service.app:create_app
--factory`` does not come through here), and a port taken between this check and uvicorn's bind
still fails the start-up there.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from imgcls.errors import BundleError, ConfigError
from imgcls.repository import ModelRepository
from service.settings import Settings

__all__ = ["check_can_start", "check_port", "check_repository"]


def check_can_start(settings: Settings) -> None:
    """Raise :class:`BundleError` or :class:`ConfigError` if the service could not start with ``settings``."""
    check_repository(settings.model_repo)
    if settings.metrics_port is not None and settings.metrics_port == settings.port != 0:
        raise ConfigError(
            f"IMGCLS_METRICS_PORT is {settings.port}, the service's own port; choose another port for the "
            "metrics, or unset IMGCLS_METRICS_PORT to serve /metrics on the service's port"
        )
    check_port(settings.host, settings.port, "--port / IMGCLS_PORT")
    if settings.metrics_port is not None:
        check_port(settings.host, settings.metrics_port, "IMGCLS_METRICS_PORT")


def check_repository(root: Path) -> None:
    """At least one bundle folder under ``root``, found by the rules the service scans with.

    Only the folders are looked for: verifying manifests and checksums is the service's start-up
    work, and a bundle that fails it is listed as not ready, with the reason, while the others serve.
    """
    if ModelRepository(root).find():  # a missing root raises its own "not found" BundleError
        return
    fix = _layout_hint(root) or (
        "make one with `imgcls train --config configs/digits.yaml` (`make demo` writes models/digits/1), "
        f"or export a run with `imgcls export --run runs/<run> --out {root / '<name>' / '1'}`"
    )
    raise BundleError(
        f"{root}: no model bundles in the model repository (the service serves its <name>/<version>/ "
        f"folders, e.g. models/digits/1/manifest.json); {fix}"
    )


def _layout_hint(root: Path) -> str | None:
    """The likely mistake when ``root`` holds no bundles: a bundle or a model folder given instead."""
    if (root / "manifest.json").is_file():
        return f"it is itself a bundle: pass the repository two levels up, --model-repo {root.parent.parent}"
    if any((child / "manifest.json").is_file() for child in root.iterdir() if child.is_dir()):
        return f"it holds the versions of one model: pass its parent, --model-repo {root.parent}"
    return None


def check_port(host: str, port: int, setting: str) -> None:
    """Bind ``host``:``port`` and let go, the way uvicorn will (``setting`` names the option, for the fix)."""
    if port == 0:  # the system picks a free port
        return
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(
            f"cannot listen on {host!r}: {exc.strerror}; use 127.0.0.1 (this machine only), 0.0.0.0 (every "
            "interface) or an address of this machine, with --host / IMGCLS_HOST"
        ) from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            # The options asyncio's create_server (uvicorn's bind) sets: a port whose last server has
            # stopped (connections in TIME_WAIT) is free; an IPv6 socket takes only IPv6.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise ConfigError(_cannot_bind(host, port, setting, exc)) from None


def _cannot_bind(host: str, port: int, setting: str, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {host} is already in use, probably by another server "
            f"(`ss -ltnp 'sport = :{port}'` shows which); stop it, or choose a free port with {setting}"
        )
    if exc.errno == errno.EACCES:
        return (
            f"not allowed to listen on port {port} on {host}: ports below 1024 need root or "
            f"CAP_NET_BIND_SERVICE; choose a port of 1024 to 65535 with {setting}"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"cannot listen on {host}: not an address of this machine; use 127.0.0.1 (this machine only), "
            "0.0.0.0 (every interface) or one of its own addresses, with --host / IMGCLS_HOST"
        )
    return f"cannot listen on {host} port {port}: {exc.strerror or exc}; check --host / IMGCLS_HOST and {setting}"
