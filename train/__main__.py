"""``python -m attnzoo.train`` is ``attnzoo-train``."""

from attnzoo.train.cli import main

main()
