"""The generated reference pages must match the code (regenerate with `make docs`)."""

from pathlib import Path

from s2s_cli.docs_gen import generated_pages

ROOT = Path(__file__).resolve().parent.parent


def test_generated_reference_pages_are_current():
    pages = generated_pages(ROOT)
    stale = [
        str(path.relative_to(ROOT))
        for path, text in pages.items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    assert stale == [], f"stale generated docs {stale}: run `make docs`"
    committed = {p.name for p in (ROOT / "docs" / "cli").glob("*.md")}
    assert committed == {p.name for p in pages if p.parent.name == "cli"}, (
        "docs/cli has extra pages"
    )


def test_reference_pages_cover_every_command_and_key():
    from s2s_cli.config import config_reference

    pages = {str(path.relative_to(ROOT)): text for path, text in generated_pages(ROOT).items()}
    for command in ("preprocess", "train", "translate", "score", "average", "info"):
        assert f"# `s2s {command}`" in pages[f"docs/cli/{command}.md"]
        assert f"[`s2s {command}`]({command}.md)" in pages["docs/cli/index.md"]
    for key, *_ in config_reference():
        assert f"`{key}`" in pages["docs/configuration.md"]
    assert "`--beam N`" in pages["docs/cli/translate.md"]
    assert "`--min-bleu X`" in pages["docs/cli/score.md"]


def test_the_module_map_lists_every_module():
    """docs/architecture.md's module map names every module of the package, and only those."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = text.split("```\ns2s_cli/\n", 1)[1].split("```", 1)[0]
    named, folder = set(), ""
    for line in block.splitlines():
        entry = line.strip().split("  ")[0]
        if line.startswith("  ") and not line.startswith("    ") and entry.endswith("/"):
            folder = entry
        elif entry.endswith("/") or not entry:
            continue
        else:
            prefix = folder if line.startswith("    ") else ""
            names = [name.strip() for name in entry.split(",")]
            named |= {prefix + name for name in names if name.endswith(".py")}
    modules = {
        str(p.relative_to(ROOT / "s2s_cli"))
        for p in (ROOT / "s2s_cli").rglob("*.py")
        if p.name != "__init__.py" or p.parent.name in ("s2s_cli", "cli")
    }
    assert named == modules


def test_every_test_the_docs_cite_exists():
    """docs/faq.md's guarantees name their tests; a renamed or deleted test fails here."""
    import re

    text = (ROOT / "docs" / "faq.md").read_text(encoding="utf-8")
    cited = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", text)
    assert len(cited) >= 8
    for path, name in cited:
        source = (ROOT / path).read_text(encoding="utf-8")
        assert f"def {name}(" in source, f"{path}::{name}"
