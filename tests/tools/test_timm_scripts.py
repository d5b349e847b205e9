"""``attnzoo timm SCRIPT ARGS...``: a timm script runs as ``__main__`` with attnzoo's models registered."""

import sys

import pytest

from attnzoo.tools import cli
from attnzoo.tools.timm_scripts import ScriptNotFoundError, run_script

# Like timm's validate.py: parse sys.argv, build the model by name with timm, report; a helper module beside it.
# The model is built on the meta device: resolving the name is what is tested, not allocating 20M parameters.
SCRIPT = """\
import argparse
import sys

import timm
import torch

from helper import describe

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True)
parser.add_argument("--exit", type=int, default=None)
args = parser.parse_args()
if args.exit is not None:
    sys.exit(args.exit)
with torch.device("meta"):
    model = timm.create_model(args.model, num_classes=7)
print(describe(__name__, sys.argv[0], args.model, type(model).__name__, model.num_classes))
"""


@pytest.fixture
def script(tmp_path):
    (tmp_path / "helper.py").write_text("def describe(*values):\n    return ' '.join(map(str, values))\n")
    path = tmp_path / "validate.py"
    path.write_text(SCRIPT)
    yield path
    sys.modules.pop("helper", None)  # imported from the script's folder, which sys.path no longer has


def test_a_timm_script_builds_an_attnzoo_model_by_name(script, capsys):
    argv, path = list(sys.argv), list(sys.path)
    cli.main(["timm", str(script), "--model", "nat_mini"])
    assert capsys.readouterr().out == f"__main__ {script} nat_mini NAT 7\n"
    assert sys.argv == argv and sys.path == path  # restored for whoever runs next in this process


def test_the_scripts_exit_status_and_errors_are_its_own(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_script(script, ["--model", "nat_mini", "--exit", "3"])
    assert exit_info.value.code == 3
    with pytest.raises(SystemExit) as exit_info:  # the script's own argparse, not ours
        run_script(script, ["--help"])
    assert exit_info.value.code == 0 and "--exit" in capsys.readouterr().out


def test_a_missing_script_is_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "validate.py"
    with pytest.raises(ScriptNotFoundError, match="not in the pip package"):
        run_script(missing)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["timm", str(missing), "--model", "nat_mini"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"attnzoo timm: error: no such script file: {missing} ")
