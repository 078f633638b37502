"""A small HTTP client for the KServe v1 route: what `imgcls predict` and the demo use."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import httpx

from imgcls.errors import ImgclsError

__all__ = ["ClientError", "predict_files", "wait_until_ready"]


class ClientError(ImgclsError):
    """The server could not be reached, or answered with an error (exit code 1, as every ImgclsError)."""


def _error(response: httpx.Response) -> ClientError:
    try:
        message = response.json().get("error", response.text)
    except ValueError:
        message = response.text
    return ClientError(f"{response.request.url}: HTTP {response.status_code}: {message}")


_LIMIT = re.compile(r"the limit is (\d+) \(max_images_per_request\)")


def predict_files(
    url: str,
    model: str,
    files: list[Path],
    *,
    version: int | None = None,
    top_k: int = 3,
    multipart: bool = False,
    timeout_s: float = 60.0,
    chunk_size: int = 64,
) -> dict:
    """POST the files to ``/v1/models/{model}[/versions/{v}]:predict`` in requests of at most
    ``chunk_size`` images (64: the service's default ``max_images_per_request``; a server that allows
    fewer says so, and the rest go in its size); returns one answer with every prediction, in order."""
    route = f"/v1/models/{model}" + (f"/versions/{version}" if version else "") + ":predict"
    predictions: list[dict] = []
    answer: dict = {}
    try:
        with httpx.Client(base_url=url, timeout=timeout_s) as http:
            start = 0
            while start < len(files):
                chunk = files[start : start + chunk_size]
                response = _post(http, route, chunk, top_k, multipart)
                limit = _LIMIT.search(response.text) if response.status_code == 400 else None
                if limit is not None and int(limit.group(1)) < len(chunk):
                    chunk_size = int(limit.group(1))  # the server's own limit, for this and every later chunk
                    continue
                if response.status_code != 200:
                    raise _error(response)
                answer = response.json()
                predictions.extend(answer["predictions"])
                start += len(chunk)
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach {url} ({exc}); is `imgcls serve` running there?") from None
    return {**answer, "predictions": predictions}


def _post(http: httpx.Client, route: str, files: list[Path], top_k: int, multipart: bool) -> httpx.Response:
    try:
        payloads = [Path(f).read_bytes() for f in files]
    except OSError as exc:
        raise ClientError(f"cannot read {exc.filename}: {exc.strerror}") from None
    if multipart:
        parts = [
            ("file", (Path(f).name, data, "application/octet-stream"))
            for f, data in zip(files, payloads, strict=True)
        ]
        return http.post(route, files=parts, data={"top_k": str(top_k)})
    instances = [{"b64": base64.b64encode(data).decode()} for data in payloads]
    return http.post(route, json={"instances": instances, "parameters": {"top_k": top_k}})


def wait_until_ready(url: str, timeout_s: float = 120.0, poll_s: float = 0.25) -> None:
    """Poll ``/readyz`` until the server reports every model warmed up."""
    import time

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/readyz", timeout=2.0)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}: {response.text}"
        except httpx.HTTPError as exc:
            last = str(exc) or type(exc).__name__
        time.sleep(poll_s)
    raise ClientError(f"{url} was not ready after {timeout_s:.0f} s (last answer: {last})")
