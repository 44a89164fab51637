"""Every command the docs show is run by a test: parsed against the real CLI, Makefile and bench/.

Fenced blocks marked bash/sh/shell/console, or whose every line starts with a known command, are
commands; other blocks are output (but a ``uv run mlcycle …`` line in them, as the demo prints for
the reader to copy, is checked too). Inline code spans that start with ``mlcycle``/``make``/``python``
are checked leniently: the (sub)command and every option must exist; values and arguments may be
left out. ``mlcycle`` lines are parsed with ``make_context`` (nothing runs); other tools are skipped.
"""

from __future__ import annotations

import re
import shlex
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [
    "README.md",
    *sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")),
    "examples/delivery_times/README.md",
]
SHELL_LANGS = {"bash", "sh", "shell", "console"}
CHECKED = {"mlcycle", "make", "python"}
KNOWN = CHECKED | {"uv", "cd", "export", "eval", "curl", "prefect", "feast", "bentoml", "docker", "pytest"}
OPERATORS = {"&&", "||", "|", "&", ";"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
PLACEHOLDER = re.compile(r"^([A-Z][A-Z0-9_]*|<[^>]*>|.*….*)$")


def split_commands(line: str) -> list[list[str]]:
    """One shell line → its simple commands' words: comments dropped, split on && ; | &, env
    assignments and ``uv run`` stripped, ``eval "$(CMD)"`` → CMD, other ``$(…)`` → one word."""
    line = re.sub(r'eval\s+"\$\(([^()]*)\)"', r"\1", line)
    line = re.sub(r"\$\([^()]*\)", "SUBST", line)
    lex = shlex.shlex(line, posix=True)
    lex.whitespace_split, lex.commenters = True, "#"
    words: list[str] = []
    for tok in lex:
        if tok.endswith(";") and tok != ";":
            words += [tok[:-1], ";"]
        else:
            words.append(tok)
    commands, current = [], []
    for word in [*words, ";"]:
        if word in OPERATORS:
            while current and ENV_ASSIGNMENT.match(current[0]):
                current.pop(0)
            if current[:2] == ["uv", "run"]:
                current = [w for w in current[2:] if w not in ("--no-sync", "--frozen")]
            if current:
                commands.append(current)
            current = []
        else:
            current.append(word)
    return commands


def logical_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Join ``\\`` continuations and quotes left open across lines; keep the first line's number."""
    out, buf, start = [], "", 0
    for no, text in lines:
        start, buf = (start, buf + "\n" + text) if buf else (no, text)
        if buf.endswith("\\"):
            buf = buf[:-1]
            continue
        try:
            shlex.split(buf, comments=True)
        except ValueError:  # a quoted string goes on on the next line
            continue
        out.append((start, buf))
        buf = ""
    return out


def is_command_line(text: str) -> bool:
    words = [w for w in text.split() if not ENV_ASSIGNMENT.match(w)]
    return not words or words[0].startswith("#") or words[0] in KNOWN


def extract(text: str) -> list[tuple[int, list[str], bool]]:
    """(line number, words, lenient) of every command a markdown text shows."""
    found, block, lang, in_block = [], [], "", False
    for no, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```(\w*)", line)
        if fence and not in_block:
            in_block, lang, block = True, fence.group(1).lower(), []
        elif fence:
            in_block = False
            if lang in SHELL_LANGS or (not lang and all(is_command_line(t) for _, t in block)):
                shown = block
            else:  # output: only the commands it prints for the reader to copy
                shown = [(n, t.strip()) for n, t in block if t.strip().startswith("uv run mlcycle ")]
            for n, logical in logical_lines([(n, t.strip().removeprefix("$ ")) for n, t in shown]):
                found += [(n, words, False) for words in split_commands(logical)]
        elif in_block:
            block.append((no, line))
        else:
            for span in re.findall(r"`([^`]+)`", line):
                try:
                    spans = split_commands(span)
                except ValueError:  # prose in backticks, not a command
                    continue
                found += [(no, [w.strip("[]") for w in ws], True) for ws in spans if len(ws) > 1 and ws[0] in CHECKED]
    return found


@pytest.fixture(scope="session")
def one_training_day_per_session() -> None:
    """Overrides conftest's autouse fixture for this module: nothing here trains (no Feast import)."""


@cache
def cli():
    import typer

    from mlcycle.cli.app import app

    return typer.main.get_command(app)


@cache
def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+):", (REPO / "Makefile").read_text(), re.M))


def check_mlcycle(args: list[str], lenient: bool) -> str | None:
    cmd, path = cli(), ["mlcycle"]
    while hasattr(cmd, "commands") and args and args[0] in cmd.commands:
        path.append(args[0])
        cmd, args = cmd.commands[args[0]], args[1:]
    name = " ".join(path)
    if hasattr(cmd, "commands"):
        if args and not args[0].startswith("-"):
            return f"{name}: no such command {args[0]!r} (has: {', '.join(cmd.commands)})"
        if not args and not cmd.invoke_without_command and not lenient:
            return f"{name}: a command is missing (has: {', '.join(cmd.commands)})"
    if "--help" in args:
        return None
    if lenient:
        known = {o for p in cmd.params for o in [*p.opts, *p.secondary_opts]}
        unknown = [a.split("=")[0] for a in args if a.startswith("-") and a.split("=")[0] not in known]
        return f"{name}: no such option {unknown[0]}" if unknown else None
    try:
        cmd.make_context(name, list(args), resilient_parsing=False)
    except Exception as exc:  # the CLI's own usage errors
        message = exc.format_message() if hasattr(exc, "format_message") else repr(exc)
        if type(exc).__name__ == "BadParameter" and any(PLACEHOLDER.match(a) and a in message for a in args):
            return None  # a placeholder (VERSION, RUN_ID, 9fda8260-…) where a value goes
        return f"{name}: {message}"
    return None


def check_python(args: list[str]) -> str | None:
    if not args or args[0].startswith("-"):
        return None  # python -m …: another tool
    script = REPO / args[0]
    if not script.is_file():
        return f"no such file {args[0]}"
    declared = set(re.findall(r"add_argument\(\s*\"(--?[\w-]+)\"", script.read_text()))
    unknown = [a.split("=")[0] for a in args[1:] if a.startswith("-") and a.split("=")[0] not in declared]
    return f"{args[0]} declares no option {unknown[0]} (has: {sorted(declared)})" if unknown else None


def check(words: list[str], lenient: bool = False) -> tuple[str, str | None]:
    """(tool, error or None) for one command's words."""
    tool = words[0].rsplit("/", 1)[-1]
    if tool == "mlcycle":
        return tool, check_mlcycle(words[1:], lenient)
    if tool == "make":
        unknown = [w for w in words[1:] if not w.startswith("-") and "=" not in w and w not in make_targets()]
        return tool, f"no Makefile target {unknown[0]!r}" if unknown else None
    if re.fullmatch(r"python(3[\d.]*)?", tool):
        return "python", check_python(words[1:])
    return tool, None  # another tool's command: counted, not checked


def doc_commands() -> list:
    cases = []
    for doc in DOCS:
        for no, words, lenient in extract((REPO / doc).read_text()):
            cases.append(pytest.param(doc, no, words, lenient, id=f"{doc}:{no}"))
    return cases


CASES = doc_commands()


@pytest.mark.parametrize(("doc", "line", "words", "lenient"), CASES)
def test_doc_command_is_accepted(doc: str, line: int, words: list[str], lenient: bool) -> None:
    tool, error = check(words, lenient)
    assert error is None, f"{doc}:{line}: `{shlex.join(words)}` ({tool}): {error}"


def test_docs_show_commands_of_each_kind() -> None:
    tools = [check(*c.values[2:])[0] for c in CASES]
    assert tools.count("mlcycle") >= 20 and tools.count("make") >= 3 and tools.count("python") >= 1, tools


def test_checker_reports_wrong_option_and_unknown_target() -> None:
    snippet = "Try:\n\n```bash\nuv run mlcycle train --no-such-flag   # wrong\nmake nope\n```\n"
    commands = extract(snippet)
    errors = [(no, check(words, lenient)[1]) for no, words, lenient in commands]
    assert [no for no, _ in errors] == [4, 5]
    assert "--no-such-flag" in errors[0][1] and "nope" in errors[1][1], errors
    assert check(["mlcycle", "approve", "9fda8260-…"]) == ("mlcycle", None)
    assert check(["mlcycle", "nosuch"])[1] and check(["mlcycle", "stream", "--help"]) == ("mlcycle", None)
