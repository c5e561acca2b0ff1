"""Help as people meet it (issue 17): every command's --help has a description, a help line for every option
and argument, and examples; `postroj --help` ends with the exit codes and the most used commands; the Usage
section of the reference (docs/reference.rst, linked from the README) names every option --help does."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

import postroj
import rig

README = Path(__file__).resolve().parent.parent.parent / "README.rst"
DOCS = sorted(README.parent.glob("docs/*.rst"))
PARSER = postroj.build_parser()
COMMANDS = next(a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction))
VM = next(a for a in COMMANDS.choices["vm"]._actions if isinstance(a, argparse._SubParsersAction))
PRIMARY = sorted({parser.prog.split()[-1]: parser for parser in COMMANDS.choices.values()}.items())
ALL = PRIMARY + [("vm " + name, parser) for name, parser in VM.choices.items()]


def test_top_level_help_ends_with_exit_codes_and_the_most_used_commands():
    text = PARSER.format_help()
    assert "exit codes:" in text and "130  interrupted" in text
    most_used = text.split("most used:", 1)[1].strip().splitlines()
    assert len(most_used) == 3 and all(line.strip().startswith("postroj ") for line in most_used)


@pytest.mark.parametrize("name, parser", ALL, ids=[name for name, _ in ALL])
def test_every_command_explains_itself_with_examples(name, parser):
    text = parser.format_help()
    assert parser.description and parser.description.endswith(".")
    examples = text.split("examples:", 1)[1].strip().splitlines()
    assert examples and all(line.startswith("  ") for line in text.split("examples:", 1)[1].splitlines()[1:] if line)
    for action in parser._actions:
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            assert action.help, "%s: %s has no help" % (name, action.option_strings or action.dest)


def usage_blocks() -> "dict[str, str]":
    """The Usage section of the README or the reference: command name -> its definition (the ``postroj ...`` line
    and what follows)."""
    section = rig.documentation().split("\nUsage\n=====\n", 1)[1].split("\nShell completion\n", 1)[0]
    blocks: "dict[str, str]" = {}
    current: "list[str]" = []
    for line in section.splitlines():
        if line.startswith("``postroj "):
            current = [name.split()[0] for name in re.findall(r"``postroj ([a-z-]+)", line)]
        elif line.startswith("``"):  # a paragraph of its own (``-v`` ...)
            current = []
        for name in current:
            blocks[name] = blocks.get(name, "") + line + "\n"
    return blocks


@pytest.mark.parametrize("name, parser", PRIMARY, ids=[name for name, _ in PRIMARY])
def test_the_readme_usage_names_every_option(name, parser):
    block = usage_blocks().get(name, "")
    assert block, "the Usage section (README or docs/reference.rst) has no ``postroj %s ...`` entry" % name
    mentioned = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", block))
    options = {o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"
               and a.help != argparse.SUPPRESS}  # postroj's own -v and --debug, hidden: the README says them once
    assert options - mentioned == set(), "%s: --help has options the Usage section does not name" % name
    assert mentioned - options - {"--"} == set(), "%s: the Usage section names options --help does not have" % name


@pytest.mark.parametrize("argv", [
    ["probe", "--image", "debian-bookworm", "--command", "true", "--jobs", "2"],
    ["-v", "pkgprobe", "--check-unit", "nginx", "--json", "-"],
    ["container", "debian-bookworm", "--bind", "/tmp", "--keep"],
    ["run", "ubuntu-noble", "--private-network"],
    ["vm", "run", "windows-2019", "--shell", "powershell"],
    ["--debug", "image", "debian-bookworm", "--force"],
    ["completion", "zsh"],
])
def test_the_parser_of_the_named_command_alone_parses_as_the_whole_one(argv):
    # start-up builds only the command the line names; it must read the line exactly as the whole parser does
    word = next(arg for arg in argv if not arg.startswith("-"))
    alone = postroj.build_parser(only=word)
    (commands,) = [a for a in alone._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) < set(COMMANDS.choices) and word in commands.choices
    assert vars(alone.parse_args(argv)) == vars(PARSER.parse_args(argv))
    assert postroj.parse_command_line(argv + ["--", "x"] if word in ("container", "run") else argv)


def test_a_word_that_is_no_command_gets_the_whole_parser_and_its_list_of_commands():
    whole = postroj.build_parser(only="no-such-command")
    (commands,) = [a for a in whole._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) == set(COMMANDS.choices)
    with pytest.raises(postroj.UsageError, match="invalid choice: 'no-such-command'.*'probe'"):
        postroj.parse_command_line(["no-such-command"])


@pytest.mark.parametrize("name", ["README.rst", "bench/README.rst"] + ["docs/" + path.name for path in DOCS])
def test_the_readmes_render_without_a_warning(name):
    """A malformed table or a broken link target renders as an error box in the README (or docs/) people read."""
    docutils_core = pytest.importorskip("docutils.core")  # `make setup-dev` installs it: CI fails a skip
    import io

    warnings = io.StringIO()
    path = README.parent / name
    docutils_core.publish_doctree(path.read_text(), source_path=str(path),
                                  settings_overrides={"warning_stream": warnings, "report_level": 2})
    assert warnings.getvalue() == "", warnings.getvalue()


def test_the_documentation_names_every_path_purge_does_not_compare():
    text = rig.documentation().split("What purge does not compare", 1)[1].split("\n\n\n", 1)[0].split(
        "``--check-unit`` reports", 1)[0]
    patterns = [p for _, group in postroj.PURGE_EXPECTED for p in group]
    missing = [p for p in patterns if p.rstrip("/").rsplit("/", 1)[-1] not in text]
    assert missing == [], "the reference's Lifecycle section does not name %s" % missing
