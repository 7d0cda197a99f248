"""Files as people have them: text files in Latin-1, Windows-1252 or UTF-16 are read in their encoding and quoted
exactly, and a build prints no library warnings."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import qa

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "seeds"
FILES = {
    "cafes.txt": ("Café owners in Montréal protest\n\nMarch 3, 2025\n\nThe owners of forty cafés in Montréal closed "
                  "their doors on Monday to protest a rise in the municipal café tax to 12 percent, said Hélène Côté, "
                  "who leads their association.\n", "latin-1"),
    "bakery.txt": ("Bakery wins “best bread” prize\n\nMarch 4, 2025\n\nThe Dupré bakery won the regional “best "
                   "bread” prize for its rye loaf – its third win in a row – the jury announced on Tuesday.\n", "cp1252"),
    "trams.txt": ("Zürich tram drivers strike\n\nMarch 5, 2025\n\nTram drivers in Zürich stopped work for six hours "
                  "on Wednesday over their rosters, the union said.\n", "utf-16"),
}
LONG_PARAGRAPH = " ".join(f"Delegates from port {n} discussed dredging, tariffs and pilot rosters at length." for n in range(60))


def test_files_in_other_encodings_are_read_and_quoted_without_warnings(tmp_path: Path) -> None:
    articles, index = tmp_path / "articles", tmp_path / "index"
    shutil.copytree(SEEDS, articles)
    for name, (text, encoding) in FILES.items():
        (articles / name).write_bytes(text.encode(encoding))
    (articles / "ports.txt").write_text(f"Port conference ends\n\nMarch 6, 2025\n\n{LONG_PARAGRAPH}\n", encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    built = subprocess.run([sys.executable, "-m", "qa.cli", "index", "--articles", str(articles), "--index", str(index)],
                           capture_output=True, text=True, env=env, cwd=ROOT)
    assert built.returncode == 0 and "6 added" in built.stdout and "skipped" not in built.stdout, built.stdout
    assert "warn" not in built.stderr.lower() and "Token indices" not in built.stderr, built.stderr

    for name, (text, _) in FILES.items():
        assert qa.article_text(articles / name) == text
    for question, expected, name in (
        ("What café tax rate are the Montréal café owners protesting?", "12 percent, said Hélène Côté", "cafes.txt"),
        ("Which bakery won the regional best bread prize?", "The Dupré bakery won the regional “best bread” prize",
         "bakery.txt"),
        ("How long did the Zürich tram drivers stop work?", "Tram drivers in Zürich stopped work for six hours",
         "trams.txt"),
    ):
        reply = qa.answer(question, store=str(index))
        citation = reply.citations[0]
        assert citation.path.endswith(name) and expected in citation.quote, reply.text
        assert qa.article_text(citation.path)[citation.start:citation.end] == citation.quote
