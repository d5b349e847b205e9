"""``python -m attnzoo.train`` is ``attnzoo-train`` (the same launcher: ``--version``, missing-extra hint, quiet)."""

from attnzoo_cli import train

train()
