"""The documentation holds together: cited design headings exist, results stay small.

* Code, tests, binaries and docs cite the design document by file and GitHub
  anchor of a heading (``docs/design.md#the-main-job`` for "The main job");
  every cited anchor must be a heading of the document, and no citation of the old
  out-of-repository design brief (``DESIGN`` + ``.md`` in capitals) remains.
* The committed results a reader uses (``experiments/results/``, ``docs/``,
  ``benchmarks/results/``) stay under 15 MB in all and 500 kB per file.
* README stays a front page: under 450 lines.

Each checker is a function of a folder, so the tests plant known answers in a
temporary folder first.
"""

from __future__ import annotations

import pathlib
import re

import pytest

from conftest import REPO

DESIGN = REPO / "docs" / "design.md"
#: Where citations of the design are looked for (folders searched recursively).
CITING = ("rodent_gbp", "experiments", "benchmarks", "tests", "docs", "README.md")
#: Text files searched for citations.
TEXT_SUFFIXES = {".py", ".md", ".txt", ".cfg", ".toml", ".json", ".csv"}
#: A citation: the document's name, ``#``, a GitHub anchor. Spelt in two parts
#: so this file's own planted examples are not citations.
CITATION = re.compile(r"design\.md" + r"#([A-Za-z0-9_-]+)")
#: The old brief's name, which no file may cite any more.
OLD_NAME = "DESIGN" + ".md"
#: In code (not in Markdown, which may link the whole page) every mention of the
#: document must name a heading.
CODE_MENTION = re.compile(r"docs/design\.md" + r"(?!#[A-Za-z0-9_-])")

RESULT_FOLDERS = ("experiments/results", "docs", "benchmarks/results")
MAX_TOTAL_BYTES = 15_000_000
MAX_FILE_BYTES = 500_000
README_MAX_LINES = 450


def github_anchor(heading: str) -> str:
  """GitHub's anchor of a Markdown heading's text (without the ``#`` marks).

  Lower case; characters other than letters, digits, spaces, hyphens and
  underscores removed; each space becomes a hyphen (Markdown code ticks and
  emphasis marks go with the punctuation).
  """
  text = heading.strip().lower()
  text = re.sub(r"[^\w\- ]", "", text)
  return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
  """Anchors of every ATX heading outside fenced code; repeats get ``-1``, ``-2``."""
  seen: dict[str, int] = {}
  out = set()
  fenced = False
  for line in markdown.splitlines():
    if line.lstrip().startswith("```"):
      fenced = not fenced
      continue
    m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
    if fenced or not m:
      continue
    base = github_anchor(m.group(1))
    n = seen.get(base, 0)
    seen[base] = n + 1
    out.add(base if n == 0 else f"{base}-{n}")
  return out


def _files(root: pathlib.Path, names) -> list[pathlib.Path]:
  files = []
  for name in names:
    path = root / name
    if path.is_file():
      files.append(path)
    elif path.is_dir():
      files += [p for p in sorted(path.rglob("*"))
                if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts]
  return files


def citation_problems(root: pathlib.Path, design: pathlib.Path, names=CITING) -> list[str]:
  """``path:line: problem`` for every citation of a missing heading, every mention
  of the old brief, and every heading-less mention of the document in code."""
  known = anchors(design.read_text())
  problems = []
  for path in _files(root, names):
    text = path.read_text(errors="replace")
    if "design" not in text.lower():
      continue
    rel = path.relative_to(root)
    for no, line in enumerate(text.splitlines(), 1):
      for anchor in CITATION.findall(line):
        if anchor not in known:
          problems.append(f"{rel}:{no}: no heading #{anchor} in {design.name}")
      if OLD_NAME in line:
        problems.append(f"{rel}:{no}: cites {OLD_NAME}, which is outside the repository")
      if path.suffix != ".md" and CODE_MENTION.search(line):
        problems.append(f"{rel}:{no}: cites the design without a heading")
  return problems


def size_problems(root: pathlib.Path, folders=RESULT_FOLDERS, *, total=MAX_TOTAL_BYTES,
                  per_file=MAX_FILE_BYTES) -> list[str]:
  """Files over ``per_file`` bytes, and the total if over ``total``."""
  problems, size = [], 0
  for folder in folders:
    for p in sorted((root / folder).rglob("*")):
      if p.is_file() and "__pycache__" not in p.parts:
        n = p.stat().st_size
        size += n
        if n > per_file:
          problems.append(f"{p.relative_to(root)}: {n} bytes > {per_file}")
  if size > total:
    problems.append(f"{', '.join(folders)}: {size} bytes in all > {total}")
  return problems


#: A Markdown link or image: ``[text](target)``.
LINK = re.compile(r"\]\(([^)\s]+)\)")


def link_problems(root: pathlib.Path, pages) -> list[str]:
  """Relative links of the Markdown ``pages`` whose file, or heading, is missing."""
  problems = []
  for page in pages:
    path = root / page
    for no, line in enumerate(path.read_text().splitlines(), 1):
      for target in LINK.findall(line):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
          continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve()
        if not dest.exists():
          problems.append(f"{page}:{no}: {file} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
          problems.append(f"{page}:{no}: no heading #{anchor} in {file}")
  return problems


# --- known answers -------------------------------------------------------------------


@pytest.mark.parametrize("heading, anchor", [
    ("The main job", "the-main-job"),
    ("Enhancement (Eq. 1)", "enhancement-eq-1"),
    ("Decisions on a user's scan", "decisions-on-a-users-scan"),
    ("The `gbp_improved` placer", "the-gbp_improved-placer"),
    ("  Parallelism  ", "parallelism"),
])
def test_github_anchor_known_answers(heading, anchor):
  assert github_anchor(heading) == anchor


def test_anchors_skip_code_and_number_repeats():
  text = "# Top\n## Data\n```\n# not a heading\n```\n### Data\n## Data ##\n"
  assert anchors(text) == {"top", "data", "data-1", "data-2"}


def _plant(tmp_path: pathlib.Path) -> pathlib.Path:
  design = tmp_path / "docs" / "design.md"
  design.parent.mkdir()
  design.write_text("# Design\n\n## The main job\n\n## Enhancement (Eq. 1)\n")
  return design


def test_citation_checker_finds_planted_problems(tmp_path):
  design = _plant(tmp_path)
  pkg = tmp_path / "rodent_gbp"
  pkg.mkdir()
  doc = "docs/design" + ".md"
  (pkg / "good.py").write_text(
      f'"""Runs it ({doc}#the-main-job)."""\n# Eq. 1 ({doc}#enhancement-eq-1)\n')
  (pkg / "bad.py").write_text(
      f'"""See {doc}#no-such-heading."""\n# ({OLD_NAME} section 1)\nx = 1  # {doc}\n')
  (tmp_path / "README.md").write_text(f"Read [the design]({doc}) first.\n")
  problems = citation_problems(tmp_path, design, names=("rodent_gbp", "README.md"))
  assert problems == [
      "rodent_gbp/bad.py:1: no heading #no-such-heading in design.md",
      f"rodent_gbp/bad.py:2: cites {OLD_NAME}, which is outside the repository",
      "rodent_gbp/bad.py:3: cites the design without a heading",
  ]


def test_link_checker_finds_planted_problems(tmp_path):
  _plant(tmp_path)
  doc = "docs/design" + ".md"
  (tmp_path / "README.md").write_text(
      f"[design]({doc}#the-main-job), [web](https://example.org/x.md#y)\n"
      f"[gone](docs/gone.md) and [bad]({doc}#no-such-heading)\n")
  assert link_problems(tmp_path, ["README.md"]) == [
      "README.md:2: docs/gone.md does not exist",
      f"README.md:2: no heading #no-such-heading in {doc}"]


def test_size_checker_finds_planted_problems(tmp_path):
  (tmp_path / "experiments" / "results").mkdir(parents=True)
  (tmp_path / "experiments" / "results" / "big.json").write_bytes(b"x" * 600)
  (tmp_path / "docs").mkdir()
  (tmp_path / "docs" / "small.md").write_bytes(b"x" * 300)
  assert size_problems(tmp_path, ("experiments/results", "docs"), total=1000,
                       per_file=500) == ["experiments/results/big.json: 600 bytes > 500"]
  assert size_problems(tmp_path, ("experiments/results", "docs"), total=800,
                       per_file=700) == ["experiments/results, docs: 900 bytes in all > 800"]


# --- the repository ------------------------------------------------------------------


def test_design_document_has_the_headings_code_relies_on():
  known = anchors(DESIGN.read_text())
  assert {"stages-of-the-data-flow", "module-map", "the-main-job", "the-placers",
          "the-model-bundle", "readings-the-paper-leaves-open"} <= known


def test_every_design_citation_names_an_existing_heading():
  cited = [a for p in _files(REPO, CITING) for a in CITATION.findall(p.read_text(errors="replace"))]
  assert len(cited) >= 30  # the code does cite the design
  assert citation_problems(REPO, DESIGN) == []


def test_readme_and_docs_links_resolve():
  pages = ["README.md"] + [str(p.relative_to(REPO)) for p in sorted((REPO / "docs").glob("*.md"))]
  assert link_problems(REPO, pages) == []


def test_committed_results_stay_small():
  assert size_problems(REPO) == []


def test_readme_is_a_front_page():
  n = len((REPO / "README.md").read_text().splitlines())
  assert n < README_MAX_LINES, f"README.md has {n} lines"
