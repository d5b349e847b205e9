"""Lightning tasks, data modules and the ``attnzoo-train`` CLI (the only layer that knows Lightning)."""
