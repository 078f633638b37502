"""A JSON nesting limit, checked before parsing: deep nesting is an attack on the parser, not data."""

from __future__ import annotations

import json

from service.errors import BadInputError

__all__ = ["check_json_depth", "load_json"]

# Keep only brackets and quotes; escaped backslashes and quotes are removed first, so every quote
# left opens or closes a string.
_KEEP = b'[]{}"'
_DELETE = bytes(b for b in range(256) if b not in _KEEP)


def check_json_depth(body: bytes, max_depth: int) -> None:
    """Raise :class:`BadInputError` if ``body`` nests arrays/objects deeper than ``max_depth``.

    Runs at C speed over ordinary payloads (base64 strings reduce to their two quotes); only a body
    made of brackets costs a Python-level pass, and that pass stops at the first level too deep.
    """
    skeleton = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _DELETE)
    depth, in_string = 0, False
    for byte in skeleton:
        if byte == 0x22:  # "
            in_string = not in_string
        elif in_string:
            continue
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > max_depth:
                raise BadInputError(
                    f"JSON nested deeper than {max_depth} levels (max_json_depth); flatten the request"
                )
        else:  # ] }
            depth -= 1


def load_json(body: bytes, max_depth: int, what: str) -> object:
    """``body`` parsed, after the depth check; :class:`BadInputError` saying what (``what``) is wrong.

    The depth check runs first and max_depth is at most 512, so the parser cannot recurse too deep.
    """
    check_json_depth(body, max_depth)
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{what} is not valid JSON ({exc.args[0] if exc.args else exc})") from None
