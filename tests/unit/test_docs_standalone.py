"""The repository stands alone: no doc, comment or script sends the reader outside it.

Why: reference material that lived beside the checkout while the project was
written is not there for a user; a link to it is a dead end (it happened:
docs/samba.md named a file of that folder for the hand-off's byte layout).
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUTSIDE = "../" + "shared"  # spelled apart so this file does not match itself
#: The reference files that lived in that folder, cited by name without the path.
NAMES = (*(n + ".md" for n in ("fsrvp-spec", "samba-integration", "python-ecosystem")),
         "digest " + "§")


def test_nothing_refers_to_files_outside_the_repository() -> None:
    files = [*REPO.glob("*.md"), *(REPO / "docs").rglob("*.md")]
    for d in ("src", "tests", "bench", "scripts"):
        files += [p for p in (REPO / d).rglob("*") if p.suffix in (".py", ".md", ".sh", ".toml")]
    hits = [f"{p.relative_to(REPO)}:{n}" for p in files
            for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
            if OUTSIDE in line or any(n in line for n in NAMES)]
    assert not hits, f"references outside the repository: {hits}"
