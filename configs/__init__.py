"""The training recipes (YAML), shipped in the wheel as ``attnzoo.configs`` so ``--config NAME`` finds them."""
