"""Command-line arguments checked before any work: numbers (argparse ``type=``) and input / output paths.

Every CLI (reloc-map, reloc-eval, reloc-eval-bag, reloc-bag-from-dataset, reloc-demo-scene, reloc-demo) validates
its flags with these, so that a bad flag is one line naming it, exit code 2, before a dataset is opened or a
network trained (a ``--json`` in an unwritable folder used to fail with a traceback after the whole evaluation).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from pathlib import Path

__all__ = ["UsageError", "HelpFormatter", "number", "check_input_file", "check_output_file", "check_output_dir",
           "check_new_dir", "check_eval_paths", "parse_json_object"]


class UsageError(ValueError):
    """A command-line flag that cannot work; the message names the flag, the value and what was expected."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help of every tool: the description as written, each flag's default appended unless its help states one,
    required flags marked "(required)"."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.required:
            return text + " (required)"
        if action.default not in (None, False, [], {}, "", argparse.SUPPRESS) and "default" not in text.lower():
            return text + " (default: %(default)s)"
        return text


def number(kind=float, min: float | None = None, max: float | None = None, min_exclusive: bool = False):
    """An argparse ``type=``: ``kind`` (float or int), finite, within [min, max] (``min_exclusive``: > min)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if min is not None and (value <= min if min_exclusive else value < min):
            raise argparse.ArgumentTypeError(f"{text} must be {'>' if min_exclusive else '>='} {min:g}")
        if max is not None and value > max:
            raise argparse.ArgumentTypeError(f"{text} must be <= {max:g}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its "invalid ... value" fallback
    return parse


def check_input_file(path, flag: str) -> Path:
    """``path`` as a Path; UsageError unless it is an existing, readable file."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{flag} {p}: no such file")
    if not p.is_file():
        raise UsageError(f"{flag} {p}: is a folder, expected a file")
    if not os.access(p, os.R_OK):
        raise UsageError(f"{flag} {p}: not readable (permission denied)")
    return p


def _check_writable_folder(folder: Path, flag: str, p: Path) -> None:
    """UsageError unless a file can be created in ``folder`` (tried for real: permissions, ACLs, read-only mounts
    and /proc-like file systems all answer)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UsageError(f"{flag} {p}: cannot write in {folder} ({e.strerror or e})") from None


def _writable_ancestor(p: Path, flag: str) -> None:
    """UsageError unless the nearest existing ancestor folder of ``p`` is a folder this process can write in."""
    parent = p.parent.absolute()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {p}: {parent} is a file, not a folder")
    _check_writable_folder(parent, flag, p)


def check_output_file(path, flag: str) -> Path:
    """``path`` as a Path; UsageError unless a file can be written there: not an existing folder, an existing
    file must be writable, missing parent folders must be creatable."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {p}: is an existing folder, expected a file name")
    if p.exists() and not os.access(p, os.W_OK):
        raise UsageError(f"{flag} {p}: the existing file is not writable (permission denied)")
    _writable_ancestor(p, flag)
    return p


def check_output_dir(path, flag: str) -> Path:
    """``path`` as a Path; UsageError unless it is (or can be created as) a folder this process can write in."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {p}: is an existing file, expected a folder")
    if p.is_dir():
        _check_writable_folder(p, flag, p)
        return p
    _writable_ancestor(p, flag)
    return p


def check_new_dir(path, flag: str) -> Path:
    """Like ``check_output_dir`` for a folder that must not exist yet (a rosbag2 the writer creates)."""
    p = Path(path)
    if p.exists():
        raise UsageError(f"{flag} {p}: already exists (the writer creates it; remove it or choose another name)")
    return check_output_dir(p, flag)


def check_eval_paths(args) -> None:
    """The paths both evaluation CLIs take: ``--map`` readable, ``--json`` writable, ``--plots`` / ``--tum``
    (when given) writable folders."""
    check_input_file(args.map, "--map")
    check_output_file(args.json, "--json")
    for flag, folder in (("--plots", args.plots), ("--tum", args.tum)):
        if folder is not None:
            check_output_dir(folder, flag)


def parse_json_object(text: str, name: str) -> dict:
    """A JSON object given as text (an option or a ROS parameter called ``name``; empty = ``{}``) -> dict. Raises a
    ValueError that names ``name`` when the text is not JSON or not an object."""
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as err:
        raise ValueError(f"{name} is not a JSON object: {err}") from err
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object")
    return value
