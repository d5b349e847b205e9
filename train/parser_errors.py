"""``attnzoo-train``'s argument errors in one line: the key, what was wrong and what was given.

jsonargparse answers a bad option or value with the whole usage (80+ lines for a task) and a nested report of every
type it tried; the line that matters is buried in it. :class:`OneLineErrorParser` prints that line alone and exits
with status 2, as argparse does; with ``JSONARGPARSE_DEBUG=true`` jsonargparse's own behaviour (the traceback) stays.
"""

from __future__ import annotations

import re
import sys
from typing import NoReturn

from jsonargparse._common import debug_mode_active
from lightning.pytorch.cli import LightningArgumentParser

_KEY = re.compile(r'^Parser key "([^"]+)":\s*(.*)$')
_CLASS_PATH = re.compile(r"^- Problem with given class_path '([^']+)':$")
_TYPE = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>")
_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "Given value:",
    "- Expected a <class 'NoneType'>",
)


def _readable(detail: str) -> str:
    """``Expected a <class 'float'>. Got value: abc`` -> ``expected float, got 'abc'``."""
    detail = _TYPE.sub(r"\1", detail.removeprefix("- "))
    detail = re.sub(r"^Expected a ", "expected ", detail)
    got = re.search(r"\.? Got value: (.*)$", detail)
    if got:
        detail = f"{detail[: got.start()]}, got {got.group(1)!r}"
    return detail[:1].lower() + detail[1:]


def one_line(message: str) -> str:
    """jsonargparse's nested report reduced to ``KEY: WHAT WAS WRONG``; other messages to their first line.

    The key is the innermost one, under its task or data class (``model.init_args.lr``); the reason is the first
    line of the innermost report that is not about the union of types tried (``expected float, got 'abc'``).
    """
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines or _KEY.match(lines[0]) is None:
        return lines[0] if lines else "invalid arguments"
    keys: list[str] = []
    owner = detail = given = None
    for line in lines:
        if key := _KEY.match(line):
            keys.append(key.group(1))
            detail = key.group(2) or None
        elif owner_path := _CLASS_PATH.match(line):
            owner = owner_path.group(1)
        elif line.startswith("Given value:") and given is None:
            given = line.split(":", 1)[1].strip()
        elif detail is None and not line.startswith(_NOISE):
            detail = line
    name = f"{keys[0]}.init_args.{'.'.join(keys[1:])}" if owner and len(keys) > 1 else keys[0]
    if owner and len(keys) == 1:
        name += ".init_args"
    text = _readable(detail or "invalid value")
    if owner:
        text += f" ({owner})"
    if given is not None and "got" not in text and not given.startswith("NestedArg"):
        text += f", got {given!r}"
    return f"{name}: {text}"


class OneLineErrorParser(LightningArgumentParser):
    """Lightning's parser, whose argument errors are one line naming the key (see the module doc)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or debug_mode_active():
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        words = parser.prog.replace(" [options]", "").split()  # "<program> fit" for a subcommand's parser
        command = " ".join(["attnzoo-train", *words[1:]])
        sys.stderr.write(f"attnzoo-train: error: {one_line(message)} (`{command} --help` lists the options)\n")
        self.exit(2)
