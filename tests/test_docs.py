"""The README stays short, and every relative link of the README and of docs/ leads to a file that exists (and,
where it names a heading of a Markdown file, to that heading)."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose(text: str) -> str:
    """The text without its fenced code blocks and inline code spans, where brackets are code, not links."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def links(page: Path) -> list[str]:
    return [target for target in LINK.findall(prose(page.read_text())) if not re.match(r"[a-z]+:", target)]


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown page: lower case, punctuation dropped, spaces to
    hyphens, a repeated one suffixed -1, -2, ..."""
    found, counts = set(), {}
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", prose_keeping_code(page.read_text()), flags=re.MULTILINE):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading counts by its text
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        found.add(slug if slug not in counts else f"{slug}-{counts[slug]}")
        counts[slug] = counts.get(slug, 0) + 1
    return found


def prose_keeping_code(text: str) -> str:
    """The text without its fenced code blocks (a `# comment` there is no heading); inline code stays."""
    return re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.MULTILINE | re.DOTALL)


def ignored(file: Path) -> bool:
    """Whether git ignores the file (a generated file that a clone does not have); False outside a git checkout."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return False
    done = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", str(file)], capture_output=True, check=False)
    return done.returncode == 0


def test_the_readme_is_at_most_200_lines():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move the details to docs/"


def test_the_link_parser_finds_links_and_headings(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A title\n\n## Reading the demo's figures: `--eval-split train`\n\n## Notes\n\n## Notes\n\n"
                    "See [x](other.md#a), ![img](../runs/a.png \"title\") and [web](https://example.org).\n"
                    "`[not](a link)`\n```bash\n# not a heading\necho [no](link)\n```\n")
    assert links(page) == ["other.md#a", "../runs/a.png"]
    assert anchors(page) == {"a-title", "reading-the-demos-figures---eval-split-train", "notes", "notes-1"}


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_resolves(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif ignored(file):
            broken.append(f"{target}: {file} is ignored by git, so a fresh clone lacks it")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_docs_link_back_to_the_readme_and_every_doc_is_linked_from_it():
    readme_links = {(ROOT / t.partition("#")[0]).resolve() for t in links(ROOT / "README.md")}
    for page in PAGES[1:]:
        assert "../README.md" in links(page), f"{page.name} does not link back to the README"
        assert page.resolve() in readme_links, f"the README does not link to docs/{page.name}"
