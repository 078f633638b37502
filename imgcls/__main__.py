"""``python -m imgcls`` is the ``imgcls`` command."""

from imgcls.cli import run

run()
