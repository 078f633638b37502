"""Which optional dependencies ("extras") a command needs, and the message when they are missing.

``pip install imgcls`` installs what serving needs; the trainer's libraries come with
``pip install "imgcls[train]"``. The lists are read from the installed distribution's own metadata,
so ``pyproject.toml`` stays the one place they are written.
"""

from __future__ import annotations

import re
from importlib import metadata

from imgcls.errors import MissingExtraError

__all__ = ["extra_providing", "extra_requirements", "missing_requirements", "require_extra"]

# Import names that are not their distribution's name (the others import as the name, '-' read as '_').
_IMPORT_NAMES = {"scikit-learn": "sklearn", "pyyaml": "yaml", "grad-cam": "pytorch_grad_cam"}
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def extra_requirements(extra: str, distribution: str = "imgcls") -> list[str]:
    """The distribution names ``distribution[extra]`` adds (empty when it is not installed as a package)."""
    try:
        requirements = metadata.requires(distribution) or []
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return []
    names = []
    for requirement in requirements:
        requirement_text, _, marker = requirement.partition(";")
        extra_match = _EXTRA_MARKER.search(marker)
        name_match = _NAME.match(requirement_text)
        if extra_match and extra_match.group(1) == extra and name_match:
            names.append(name_match.group(1))
    return names


def missing_requirements(extra: str, distribution: str = "imgcls") -> list[str]:
    """The distributions of ``distribution[extra]`` that are not installed here."""
    missing = []
    for name in extra_requirements(extra, distribution):
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def require_extra(extra: str, command: str) -> None:
    """Raise :class:`MissingExtraError` naming what to install when ``imgcls[extra]`` is incomplete."""
    missing = missing_requirements(extra)
    if missing:
        raise MissingExtraError(
            f"{command} needs the {extra} extra, which is not installed here (missing: {', '.join(missing)}); "
            f'install it with: pip install "imgcls[{extra}]"'
        )


def extra_providing(module: str | None, extra: str = "train") -> str | None:
    """``extra`` when ``module`` (a dotted import name) belongs to one of its distributions that is not
    installed here, else None: whether a ModuleNotFoundError means "install the extra" or a real bug."""
    if not module:
        return None
    top = module.partition(".")[0]
    for name in missing_requirements(extra):
        if top == _IMPORT_NAMES.get(name.lower(), name.lower().replace("-", "_")):
            return extra
    return None
