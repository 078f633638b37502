"""Writing a value into a training config file in place, every other line and comment kept.

``imgcls lr-find --write-config`` sets ``optim.lr`` this way; the edited file is read back and must
be the same config with only that value changed, or the original is restored.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from imgcls.errors import ConfigError
from trainer.config import load_config

__all__ = ["format_lr", "write_lr_into_config"]


def format_lr(lr: float) -> str:
    """3 significant digits, as YAML reads a float (PyYAML wants a dot: ``1e-05`` is a string)."""
    text = f"{lr:.3g}"
    mantissa, sep, exponent = text.partition("e")
    if sep and "." not in mantissa:
        text = f"{mantissa}.0e{exponent}"
    return text


_OPTIM_KEY = re.compile(r"optim\s*:")
_OPTIM_HEADER = re.compile(r"optim\s*:\s*(#.*)?")
_LR_KEY = re.compile(r"lr\s*:(\s|$)")
_LR_LINE = re.compile(r"(?P<key>\s*lr\s*:)(?P<space>\s*)(?P<value>.*?)(?P<comment>\s+#.*)?")


def write_lr_into_config(config_path: Path, lr: float) -> None:
    """Set ``optim.lr`` in the YAML file in place; every other line, comments included, stays as it is.

    The file is read back with :func:`~trainer.config.load_config`: unless it is the same config with
    only ``optim.lr`` changed, the original text is restored and ConfigError raised.
    """
    path = Path(config_path)
    if not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"cannot write optim.lr={lr}: a learning rate is positive and finite")
    before = load_config(path)  # a file that does not load is not edited
    original = path.read_bytes()
    value = format_lr(lr)
    path.write_bytes(_with_lr(original.decode("utf-8"), value, path).encode("utf-8"))
    try:
        after = load_config(path)
    except ConfigError as exc:
        path.write_bytes(original)
        raise ConfigError(
            f"{path}: writing optim.lr={value} broke the file ({exc}); restored it, set it by hand"
        ) from None
    expected = before.model_copy(update={"optim": before.optim.model_copy(update={"lr": float(value)})})
    if after != expected:
        path.write_bytes(original)
        raise ConfigError(
            f"{path}: writing optim.lr={value} changed more than optim.lr (is `optim` or `lr` written in an "
            "unusual form?); restored the file, set optim.lr by hand"
        )


def _with_lr(text: str, value: str, path: Path) -> str:
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = text.splitlines(keepends=True)
    header = None
    for index, line in enumerate(lines):
        if _OPTIM_KEY.match(line):
            if not _OPTIM_HEADER.fullmatch(line.rstrip("\r\n").rstrip()):
                raise ConfigError(
                    f"{path}: `optim:` is not a block mapping (one key per line); set optim.lr by hand"
                )
            header = index
    if header is None:
        separator = newline if text and not text.endswith("\n") else ""
        return f"{text}{separator}optim:{newline}  lr: {value}{newline}"
    child_indent, lr_index = None, None
    for index in range(header + 1, len(lines)):
        body = lines[index].rstrip("\r\n")
        stripped = body.lstrip(" ")
        if not stripped.strip() or stripped.startswith("#"):
            continue  # blank and comment lines do not end a mapping
        indent = len(body) - len(stripped)
        if indent == 0:
            break  # the next top-level key
        child_indent = indent if child_indent is None else child_indent
        if indent == child_indent and _LR_KEY.match(stripped):
            lr_index = index  # the last one, as PyYAML keeps the last of repeated keys
    if lr_index is None:
        lines.insert(header + 1, f"{' ' * (child_indent or 2)}lr: {value}{newline}")
        return "".join(lines)
    line = lines[lr_index]
    body = line.rstrip("\r\n")
    match = _LR_LINE.fullmatch(body)
    if match is None:  # pragma: no cover - _LR_KEY matched, so _LR_LINE does
        raise ConfigError(f"{path}: cannot read the line {body!r}; set optim.lr by hand")
    lines[lr_index] = (
        f"{match['key']}{match['space'] or ' '}{value}{match['comment'] or ''}{line[len(body) :]}"
    )
    return "".join(lines)
