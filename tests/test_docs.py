"""The generated reference pages must match the code (regenerate with `make docs`)."""

from pathlib import Path

import pytest

from s2s_cli.docs_gen import generated_pages

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["cli.md", "configuration.md"])
def test_generated_reference_page_is_current(name):
    pages = {path.name: text for path, text in generated_pages(ROOT).items()}
    committed = (ROOT / "docs" / name).read_text(encoding="utf-8")
    assert committed == pages[name], f"docs/{name} is stale: run `make docs`"


def test_reference_pages_cover_every_command_and_key():
    from s2s_cli.config import config_reference

    pages = {path.name: text for path, text in generated_pages(ROOT).items()}
    for command in ("preprocess", "train", "translate", "score", "average", "info"):
        assert f"## `s2s {command}`" in pages["cli.md"]
    for key, *_ in config_reference():
        assert f"`{key}`" in pages["configuration.md"]
    assert "`--beam N`" in pages["cli.md"] and "`--max-len-a A`" in pages["cli.md"]
