"""Reference pages generated from the code itself: the CLI (from Typer) and the config keys.

``python scripts/gen_docs.py`` (``make docs``) writes ``docs/cli/*.md`` and
``docs/configuration.md``; a test fails when the committed pages differ from what this produces.
"""

from __future__ import annotations

import re
from pathlib import Path

from s2s_cli.config import PRESET_DIR, SECTIONS, config_reference

MARKUP = re.compile(r"\[/?(?:bold|italic|dim|red|green|yellow|cyan|magenta|blue|underline)?\]")
SECTION_TITLES = {
    "data": "`data`: preprocessing (`s2s preprocess`)",
    "model": "`model`: architecture (see [models.md](models.md))",
    "train": "`train`: optimisation, batching, validation, checkpoints (`s2s train`)",
    "decode": "`decode`: search (`s2s translate`, validation)",
}


def _plain(text: str | None) -> str:
    return MARKUP.sub("", text or "").replace("\\[", "[").strip()


def cli_pages() -> dict[str, str]:
    """``{file name: markdown}``: an index plus one page per subcommand, from the Typer app."""
    from s2s_cli.cli import command

    group = command()
    ctx = group.make_context("s2s", [], resilient_parsing=True)
    index = [
        "# Command-line reference",
        "",
        "Generated from the commands' own `--help` by `make docs`; do not edit by hand.",
        "",
        "Exit codes: 0 success, 1 data/runtime/checkpoint error, 2 usage or configuration",
        "error, 130 interrupted (SIGINT; during training 143 for SIGTERM, 129 for SIGHUP). Data",
        "goes to stdout, logs and progress to stderr. Text is UTF-8 in and out, whatever the",
        "locale: input that is not is an error naming the file and line. `s2s --version` prints",
        "the version.",
        "",
        "| command | purpose |",
        "|---|---|",
    ]
    pages = {}
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        summary = _plain(command.help).split("\n\n")[0].replace("\n", " ")
        index.append(f"| [`s2s {name}`]({name}.md) | {summary} |")
        pages[f"{name}.md"] = _command_page(name, command, ctx)
    pages["index.md"] = "\n".join(index) + "\n"
    return pages


def _command_page(name: str, command, ctx) -> str:  # command, ctx: Typer's click objects
    sub = command.make_context(name, [], parent=ctx, resilient_parsing=True)
    usage = " ".join(command.collect_usage_pieces(sub))
    lines = [
        f"# `s2s {name}`",
        "",
        "Generated from `s2s " + name + " --help` by `make docs`.",
        "",
        f"```\ns2s {name} {usage}\n```",
        "",
        _plain(command.help),
        "",
    ]
    rows = []
    for param in command.params:
        if param.name == "help":
            continue
        if param.param_type_name == "argument":
            flags = f"`{param.metavar or param.name.upper()}`"
        else:
            flag = getattr(param, "is_flag", False)
            metavar = "" if flag or not param.metavar else f" {param.metavar}"
            flags = ", ".join(f"`{o}{_cell(metavar)}`" for o in param.opts)
            flags += "".join(f", `{o}`" for o in param.secondary_opts)
        help_text = _cell(_plain(getattr(param, "help", None)))
        default = param.default
        hidden = default in (None, False, (), []) or param.required
        rows.append(f"| {flags} | {help_text}{'' if hidden else f' (default: `{default}`)'} |")
    if rows:
        lines += ["| argument / option | meaning |", "|---|---|", *rows, ""]
    lines += ["See also: [all commands](index.md), [configuration](../configuration.md).", ""]
    return "\n".join(lines)


def configuration_markdown() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from `s2s_cli/config.py` by `make docs`; do not edit by hand.",
        "",
        "A config is YAML with up to four sections; every key is optional and defaults as",
        "below. On the command line, `SECTION.KEY=VALUE` overrides a key (`train.lr=0.002`),",
        "values parsed as YAML (`null`, `true`, `[0.9, 0.98]`). Unknown keys, wrong types and",
        "invalid choices are errors that name the key. `model.preset` loads a named architecture",
        "that other `model.*` keys override. Each run writes its resolved config (`config.yaml`)",
        "next to its output.",
        "",
    ]
    rows_by_section: dict[str, list[tuple[str, str, str, str]]] = {s: [] for s in SECTIONS}
    for key, type_text, default, comment in config_reference():
        rows_by_section[key.split(".")[0]].append((key, type_text, default, comment))
    for section, rows in rows_by_section.items():
        lines += [
            f"## {SECTION_TITLES[section]}",
            "",
            "| key | type | default | meaning |",
            "|---|---|---|---|",
        ]
        for key, type_text, default, comment in rows:
            cells = [f"`{key}`", _cell(type_text), f"`{default}`", _cell(comment)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Presets", "", "`model.preset` values (files in `s2s_cli/presets/`):", ""]
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        summary = " ".join(
            line.lstrip("# ").strip()
            for line in path.read_text().splitlines()
            if line.startswith("#")
        )
        lines.append(f"- `{path.stem}`: {summary}")
    return "\n".join(lines).rstrip() + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def generated_pages(root: Path) -> dict[Path, str]:
    pages = {root / "docs" / "cli" / name: text for name, text in cli_pages().items()}
    pages[root / "docs" / "configuration.md"] = configuration_markdown()
    return pages
