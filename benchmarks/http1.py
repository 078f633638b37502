"""A minimal keep-alive HTTP/1.1 client for the load generator, so the client is never the bottleneck.

A general client (httpx) spends 2-3 ms of CPU per request building and parsing messages; on a
small machine that shares its cores with the server, that CPU comes straight out of the server's
throughput. Benchmark requests are known up front, so each is serialised once to bytes, and a
connection only writes them and parses the status line, the headers it needs and the body (by
Content-Length, or chunked). TLS is supported for remote ``https://`` targets.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["Connection", "HttpResponse", "Target", "encode_request"]


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    tls: bool
    prefix: str  # a base path the server is mounted under, without the trailing slash

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        tls = parts.scheme == "https"
        return cls(parts.hostname, parts.port or (443 if tls else 80), tls, parts.path.rstrip("/"))

    @property
    def host_header(self) -> str:
        default = 443 if self.tls else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


def encode_request(target: Target, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """One complete ``POST`` request, ready to write to a connection any number of times."""
    lines = [
        f"POST {target.prefix}{path} HTTP/1.1",
        f"Host: {target.host_header}",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Connection:
    """One persistent connection; ``send`` one request at a time. Reconnects after a close or an error."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send(self, raw_request: bytes) -> HttpResponse:
        if self._writer is None:
            context = ssl.create_default_context() if self.target.tls else None
            self._reader, self._writer = await asyncio.open_connection(
                self.target.host, self.target.port, ssl=context, limit=2**22
            )
        try:
            self._writer.write(raw_request)
            response = await self._read_response()
        except BaseException:
            self.close()
            raise
        if response.headers.get("connection", "").lower() == "close":
            self.close()
        return response

    async def _read_response(self) -> HttpResponse:
        reader = self._reader
        assert reader is not None
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
            status = int(status_line.split(" ", 2)[1])
            headers = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if status >= 200:
                break  # 1xx interim responses (100 Continue) carry no body
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")  # no trailers expected; the final CRLF
                    break
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
            body = b"".join(chunks)
        else:
            body = await reader.read()  # the body runs to the end of the connection
            headers["connection"] = "close"
        return HttpResponse(status, headers, body)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
