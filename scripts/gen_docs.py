#!/usr/bin/env python3
"""Regenerate docs/cli/*.md and docs/configuration.md from the code (``make docs``)."""

from pathlib import Path

from s2s_cli.docs_gen import generated_pages

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    for path, text in generated_pages(ROOT).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(path.relative_to(ROOT))
