"""The README and docs are a front door whose numbers come from committed run summaries."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from pneumolib.reporting import summaries

ROOT = Path(__file__).resolve().parents[1]


def test_every_generated_block_matches_its_summary():
    stale = summaries.check()
    assert not stale, ("these blocks differ from figures/readme/: run `python -m pneumolib.reporting.summaries "
                       "render` (after collecting a run of the committed code): " + "; ".join(stale))
    for doc in summaries.DOCUMENTS:
        text = (ROOT / doc).read_text()
        assert "<!-- summary:" not in text or summaries.BLOCK.search(text), doc


def test_a_changed_number_is_caught(tmp_path):
    """The check is not vacuous: alter one number in a summary and the README goes stale."""
    root = tmp_path / "readme"
    for d in summaries.SUMMARIES.iterdir():
        if d.is_dir():
            (root / d.name).mkdir(parents=True)
            for f in d.iterdir():
                (root / d.name / f.name).write_bytes(f.read_bytes())
    t4 = pd.read_csv(root / "demo" / "table4.csv")
    t4.loc[0, "dice_pooled"] += 0.01
    t4.to_csv(root / "demo" / "table4.csv", index=False)
    assert any("demo/table4" in s for s in summaries.check(root=root))


def test_the_summaries_are_of_committed_code():
    """The stamped commits exist in this repository's history and the runs had no
    uncommitted changes."""
    for stamp in summaries.SUMMARIES.glob("*/RUN.json"):
        commits = json.loads(stamp.read_text()).get("commits") or []
        assert commits, stamp
        for c in commits:
            assert not c.endswith("+dirty"), f"{stamp}: runs made with uncommitted changes ({c})"
        if (ROOT / ".git").exists():
            for c in commits:
                ok = subprocess.run(["git", "cat-file", "-e", f"{c}^{{commit}}"], cwd=ROOT, capture_output=True)
                if ok.returncode != 0:
                    pytest.skip("shallow clone: the stamped commit is not in this checkout's history")


def test_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) < 11_000, "the README grew past ~10 KB: move detail into docs/"
    assert "./setup.sh && .venv/bin/python -m pytest" in text
    links = re.findall(r"\]\(((?:docs/)?[\w/.-]+\.md)\)", text)
    pages = sorted({p for p in links if p.startswith("docs/")})
    for p in pages:
        assert (ROOT / p).exists(), p
    for p in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{p.name}" in pages, f"docs/{p.name} is not linked from the README"
    for img in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (ROOT / img).exists(), img
    for doc in ("docs/RESULTS.md", "docs/STUDIES.md", "docs/DATA.md"):
        for img in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (ROOT / doc).read_text()):
            assert (ROOT / "docs" / img).resolve().exists(), (doc, img)
