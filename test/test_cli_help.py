"""Every command-line tool answers --help (argparse help strings are formatted, so a stray '%' breaks them)."""
import importlib

import pytest

from reloc_ros.entry_points import CONSOLE_SCRIPTS

# The node executables take ROS arguments (--ros-args ...), not argparse options.
ARGPARSE_TOOLS = sorted(k for k in CONSOLE_SCRIPTS if k not in ("reloc-localizer", "reloc-mapper"))


@pytest.mark.parametrize("name", ARGPARSE_TOOLS)
def test_help(name, capsys):
    module, func = CONSOLE_SCRIPTS[name].split(":")
    with pytest.raises(SystemExit) as e:
        getattr(importlib.import_module(module), func)(["--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out
