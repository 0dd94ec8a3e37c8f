"""The generated references in docs/ match the code (run tools/gen-docs after changing a command or a setting)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_generator():
    from importlib.machinery import SourceFileLoader
    loader = SourceFileLoader("gen_docs", str(ROOT / "tools" / "gen-docs"))
    spec = importlib.util.spec_from_loader("gen_docs", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_generated_docs_are_current():
    generator = load_generator()
    for relative, build in generator.DOCS.items():
        assert (ROOT / relative).read_text() == build(), f"{relative} is stale: run tools/gen-docs"


def test_readme_links_every_doc():
    readme = (ROOT / "README.md").read_text()
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{doc.name}" in readme, f"README does not link docs/{doc.name}"
