"""MkDocs hook: the CLI reference page is written from the ``mosmos`` argparse parsers at build time, so it
lists exactly the sub-commands and options the installed code accepts (it cannot drift from them)."""

from __future__ import annotations

import argparse
import html

MARKER = "<!-- mosmos-cli-reference -->"


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("mosmos",)):
    """(command words, parser, help) for ``parser`` and every sub-command below it, depth first."""
    yield path, parser, parser.description
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                sub.description = sub.description or helps.get(name)
                yield from commands(sub, (*path, name))


def options(parser: argparse.ArgumentParser):
    """The documented arguments of one parser: (names, help), without -h and the sub-command slot."""
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction, argparse._VersionAction)):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        names = ", ".join(action.option_strings) or action.metavar or action.dest
        text = formatter._expand_help(action) if action.help else ""
        yield names, action, text


def _cell(text: str) -> str:
    """Help text as one table cell that shows as typed: `code` stays code, HTML and emphasis marks stay text."""
    parts = " ".join(str(text).split()).split("`")
    for i in range(0, len(parts), 2):  # outside code spans
        parts[i] = html.escape(parts[i], quote=False).replace("*", "\\*").replace("_", "\\_")
    return "`".join(parts).replace("|", "\\|")


def reference_markdown(parser: argparse.ArgumentParser) -> str:
    out = []
    for path, sub, description in commands(parser):
        out.append(f"## `{' '.join(path)}`\n")
        if description:
            out.append(f"{_cell(description)}\n")
        usage = " ".join(sub.format_usage().split())
        out.append(f"```text\n{usage}\n```\n")
        rows = list(options(sub))
        if rows:
            out.append("| argument | meaning |\n|---|---|")
            for names, action, text in rows:
                if action.choices and not isinstance(action.choices, dict):
                    text = f"{text} (one of: {', '.join(map(str, action.choices))})".strip()
                if action.required and action.option_strings:
                    text = f"required. {text}"
                out.append(f"| `{_cell(names)}` | {_cell(text)} |")
            out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    from mosmos.cli import build_parser

    return markdown.replace(MARKER, reference_markdown(build_parser()))
