"""``python -m trainer`` is the ``imgcls`` command."""

from trainer.cli import run

run()
