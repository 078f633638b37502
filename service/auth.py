"""Optional API-key authentication: ``Authorization: Bearer <key>``, keys compared in constant time.

Off unless keys are configured (``IMGCLS_API_KEYS`` or a mounted ``IMGCLS_API_KEYS_FILE``). Health
and metrics stay open by default so probes and Prometheus need no secret; settings close them too.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from imgcls.errors import ConfigError
from service.errors import error_response

__all__ = ["ApiKeyMiddleware", "load_api_keys"]

HEALTH_PATHS = ("/healthz", "/readyz", "/v2/health/")
# The page's own files carry no data: it loads without a key and asks for one when the API answers 401.
PAGE_PATHS = frozenset({"/", "/ui", "/ui/", "/ui/app.js", "/ui/app.css"})


def load_api_keys(keys: list[str], keys_file: Path | None) -> list[bytes]:
    """The configured keys: from the setting and from a file with one key per line (blank lines and # ignored)."""
    found = [k.strip() for k in keys if k.strip()]
    if keys_file is not None:
        try:
            lines = Path(keys_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(
                f"{keys_file}: cannot read the API keys file ({exc.strerror}); check IMGCLS_API_KEYS_FILE"
            ) from None
        found += [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    short = [k for k in found if len(k) < 16]
    if short:
        raise ConfigError(
            f"{len(short)} API key(s) shorter than 16 characters; use long random keys (e.g. openssl rand -hex 32)"
        )
    return [k.encode() for k in found]


class ApiKeyMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        keys: list[bytes],
        protect_health: bool = False,
        protect_metrics: bool = False,
        on_reject: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.protect_health = protect_health
        self.protect_metrics = protect_metrics
        self._on_reject = on_reject

    def _open(self, path: str) -> bool:
        if path.startswith(HEALTH_PATHS):
            return not self.protect_health
        if path == "/metrics":
            return not self.protect_metrics
        return path in PAGE_PATHS

    def _authorized(self, scope: Scope) -> bool:
        header = next((v for k, v in scope.get("headers", []) if k == b"authorization"), b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return False
        token, matched = token.strip(), False
        for key in self.keys:  # no early exit: the time taken does not depend on which key matched
            matched |= hmac.compare_digest(key, token)
        return matched

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or self._open(scope["path"]) or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        if self._on_reject is not None:
            self._on_reject()
        refusal = error_response(
            401,
            "missing or invalid API key; send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": 'Bearer realm="imgcls"'},
        )
        await refusal(scope, receive, send)
