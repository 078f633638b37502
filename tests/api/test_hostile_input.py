"""A corpus of hostile and awkward inputs, built here, sent through every protocol.

Unusual but valid images are classified (200); everything else gets a 4xx with a message, and the
process keeps serving.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from service.v2_codec import serialize_bytes


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _declared_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels but which carries almost no data (a bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _animated_gif() -> bytes:
    buffer = io.BytesIO()
    frames = [Image.new("RGB", (24, 24), color) for color in ("red", "blue", "green")]
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


_PHOTO = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))
VALID = {
    "cmyk-jpeg": _encoded(_PHOTO.convert("CMYK"), "JPEG"),
    "16-bit-png": _encoded(Image.fromarray(np.full((20, 20), 50_000, np.uint16)), "PNG"),
    "animated-gif": _animated_gif(),
    "palette-png-with-transparency": _encoded(_PHOTO.convert("P"), "PNG", transparency=0),
}
INVALID = {
    "zero-bytes": (b"", "empty image"),
    "truncated-jpeg": (_encoded(_PHOTO, "JPEG")[:150], "corrupt or truncated"),
    "decompression-bomb-png": (_declared_png(30_000, 30_000), "over the limit"),
    "huge-dimensions-small-file": (
        _encoded(Image.new("L", (8_000, 6_000)), "PNG"),
        "8000x6000 pixels is over the limit",
    ),
    "svg": (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
        "not a decodable image",
    ),
    "text-named-jpg": (b"this is a text file called photo.jpg\n", "not a decodable image"),
}


def _v1(client, data: bytes):
    return client.post(
        "/v1/models/tiny:predict", json={"instances": [{"b64": base64.b64encode(data).decode()}]}
    )


def _v1_multipart(client, data: bytes):
    return client.post(
        "/v1/models/tiny:predict", files=[("file", ("upload", data, "application/octet-stream"))]
    )


def _v2_binary(client, data: bytes):
    raw = serialize_bytes([data])
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    return client.post(
        "/v2/models/tiny/infer",
        content=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


SENDERS = {"v1-json": _v1, "v1-multipart": _v1_multipart, "v2-binary": _v2_binary}


@pytest.mark.parametrize("sender", SENDERS)
@pytest.mark.parametrize("name", VALID)
def test_unusual_but_valid_images_are_classified(client, name: str, sender: str):
    response = SENDERS[sender](client, VALID[name])
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("sender", SENDERS)
@pytest.mark.parametrize("name", INVALID)
def test_hostile_images_get_a_400_with_a_reason_and_the_server_keeps_serving(client, name: str, sender: str):
    data, message = INVALID[name]
    response = SENDERS[sender](client, data)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert client.get("/healthz").status_code == 200


def test_base64_with_line_breaks_is_accepted(client):
    wrapped = base64.encodebytes(VALID["animated-gif"]).decode()  # 76-character lines, like `base64 file`
    assert "\n" in wrapped
    assert client.post("/v1/models/tiny:predict", json={"instances": [{"b64": wrapped}]}).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, 400, "nested deeper than 32 levels"),
        (
            json.dumps({"instances": [{"b64": "QUJD"}], "pad": "x" * 40_000_000}).encode(),
            413,
            "over the limit",
        ),
        (b'{"instances": [{"b64": "not base64!"}]}', 400, "not valid base64"),
        (b'{"instances": "all of them"}', 400, '"instances"'),
    ],
    ids=["deeply-nested-json", "huge-json", "invalid-base64", "instances-not-a-list"],
)
def test_hostile_json_bodies_are_4xx(client, body: bytes, status: int, message: str):
    response = client.post(
        "/v1/models/tiny:predict", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text[:200]
    assert message in response.json()["error"]


def test_multipart_without_a_file_is_400(client):
    response = client.post("/v1/models/tiny:predict", data={"note": "no file here"}, files=[])
    assert response.status_code in (400, 415)
    assert "error" in response.json()
