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


@pytest.mark.parametrize("name, table", [("reloc-localizer", "LOCALIZER_PARAMS"), ("reloc-mapper", "MAPPER_PARAMS")])
def test_node_executables_print_help_instead_of_starting(name, table):
    """`reloc-localizer --help` used to start a node and wait forever, `reloc-mapper --help` exited 2. Run as a user
    does (a subprocess, its own argv): help on stdout, every parameter with its default, exit 0, promptly."""
    import subprocess
    import sys

    from reloc_ros.ros import params
    module = CONSOLE_SCRIPTS[name].split(":")[0]
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: {name}")
    for p in getattr(params, table):
        assert f"  {p.name} ({p.type_name}, default {p.default!r}" in r.stdout, p.name


@pytest.mark.parametrize("minutes", ["-1", "nan", "0", "inf", "ten"])
def test_reloc_map_refuses_a_bad_minutes_cap_before_any_work(minutes, tmp_path, capsys):
    from reloc_ros.mapping.cli import main
    out = tmp_path / "m.map.safetensors"
    with pytest.raises(SystemExit) as e:
        main(["--dataset", str(tmp_path), "--out", str(out), "--minutes", minutes])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --minutes" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob("*.ckpt.pt"))


def test_help_states_defaults_and_required_flags(capsys):
    from reloc_ros.mapping.cli import main
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(required)" in text and "iterations=9600" in text and "epochs=110" in text and "ACE 10, implicit 20" in text


def _parser_of(name, monkeypatch):
    """The ArgumentParser a tool's main() builds (captured when it parses)."""
    import argparse

    class Captured(Exception):
        pass

    def capture(self, *a, **k):
        raise Captured(self)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    module, func = CONSOLE_SCRIPTS[name].split(":")
    with pytest.raises(Captured) as e:
        getattr(importlib.import_module(module), func)(["--help"])
    return e.value.args[0]


@pytest.mark.parametrize("name", ARGPARSE_TOOLS)
def test_every_flag_has_help_and_required_ones_say_so(name, monkeypatch):
    from reloc_ros.cli_args import HelpFormatter
    p = _parser_of(name, monkeypatch)
    assert p.formatter_class is HelpFormatter, name
    undocumented = [a.option_strings for a in p._actions if a.help in (None, "") and a.option_strings]
    assert not undocumented, f"{name}: flags without help: {undocumented}"
    text = " ".join(p.format_help().split())
    for a in p._actions:
        if a.required:
            assert f"{a.help} (required)" in " ".join(text.split()), (name, a.option_strings)
