"""The named public sets: source, pinned commit, licence, citation, manifest.

Each set is described by a :class:`DatasetInfo`; its manifest (one
:class:`ManifestEntry` per data file: sha256, size in bytes, path relative to
the set's root in the source repository) is what every download and every
local copy is checked against. The manifests' text lives in
``rodent_gbp.datasets.manifests`` (hashes and paths only; no data of any set
ships in the package).
"""

from __future__ import annotations

import dataclasses
import hashlib

from rodent_gbp.datasets import manifests
from rodent_gbp.errors import UsageError


@dataclasses.dataclass(frozen=True)
class ManifestEntry:
  """One data file of a set.

  Attributes:
    sha256: hex digest of the file's bytes.
    size: the file's length in bytes.
    path: POSIX path relative to the set's root (``DatasetInfo.subdir``).
  """

  sha256: str
  size: int
  path: str


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """A public set at a pinned commit.

  Attributes:
    name: the project's name for the set (``"mouse_epi"``).
    repository: ``owner/name`` on GitHub.
    commit: the pinned commit (40 hex digits).
    subdir: the set's root inside the repository ("" for the repository root);
      manifest paths are relative to it.
    licence: SPDX identifier of the set's licence.
    citation: what to cite when using the set.
    manifest_text: the ``sha256  bytes  path`` lines.
    local_name: the folder name of a local copy (``../shared/data/<local_name>``).
    skull_stripped: the images are zero outside the brain (nothing to remove:
      a run reports the manual-removal table and saliency, not placement).
  """

  name: str
  repository: str
  commit: str
  subdir: str
  licence: str
  citation: str
  manifest_text: str
  local_name: str
  skull_stripped: bool = False

  @property
  def manifest(self) -> tuple[ManifestEntry, ...]:
    """The manifest's entries in file order."""
    return parse_manifest(self.manifest_text, source=f"manifest of {self.name}")

  @property
  def manifest_sha256(self) -> str:
    """sha256 of the manifest's text: the cache key of everything derived from it."""
    return hashlib.sha256(self.manifest_text.encode()).hexdigest()

  @property
  def source_url(self) -> str:
    """The repository's page at the pinned commit."""
    tree = f"/tree/{self.commit}" + (f"/{self.subdir}" if self.subdir else "")
    return f"https://github.com/{self.repository}{tree}"

  @property
  def raw_base_url(self) -> str:
    """Raw file URLs at the pinned commit: ``<raw_base_url>/<manifest path>``."""
    base = f"https://raw.githubusercontent.com/{self.repository}/{self.commit}"
    return base + (f"/{self.subdir}" if self.subdir else "")

  def provenance(self) -> dict[str, str]:
    """The set's provenance as a JSON-able dict (what a converted folder records)."""
    return {"dataset": self.name, "repository": self.repository,
            "commit": self.commit, "subdir": self.subdir, "source_url": self.source_url,
            "licence": self.licence, "citation": self.citation,
            "manifest_sha256": self.manifest_sha256, "skull_stripped": self.skull_stripped}


def parse_manifest(text: str, *, source: str = "manifest") -> tuple[ManifestEntry, ...]:
  """Parses ``sha256  bytes  path`` lines (blank lines ignored).

  Raises:
    ValueError: a malformed line (names ``source`` and the line number).
  """
  entries = []
  for number, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    parts = line.split(maxsplit=2)
    if (len(parts) != 3 or len(parts[0]) != 64 or not parts[1].isdigit()
        or any(c not in "0123456789abcdef" for c in parts[0])):
      raise ValueError(f"{source}: line {number} is not 'sha256  bytes  path': {line!r}")
    entries.append(ManifestEntry(parts[0], int(parts[1]), parts[2].strip()))
  return tuple(entries)


MOUSE_EPI = DatasetInfo(
    name="mouse_epi",
    repository="sidneyp/skull-stripper",
    commit="35e6bb5cfbc2336e9d11dfa8e97d5e366daf976f",
    subdir="",
    licence="MIT",
    citation=("Pontes-Filho S., Dahl A. G., Nichele S., Mello G. B. M. (2021). A deep "
              "learning-based tool for automatic brain extraction from functional magnetic "
              "resonance images of rodents. IntelliSys 2021, LNNS 296, 549-558."),
    manifest_text=manifests.MOUSE_EPI,
    local_name="mouse-epi",
)

MOUSE_T2_ATLAS = DatasetInfo(
    name="mouse_t2_atlas",
    repository="dama-lab/mouse-brain-atlas",
    commit="61d2e0155fc8a0cb77a21fdd7156436574083178",
    subdir="rTg4510/rTg4510_in_vivo_LR",
    licence="GPL-3.0",
    citation=("Ma D. et al. (2014). Automatic structural parcellation of mouse brain MRI "
              "using multi-atlas label fusion. PLoS ONE 9(1): e86576; Ma D. et al. (2019), "
              "Frontiers in Neuroscience 13:11 (the rTg4510 in-vivo set)."),
    manifest_text=manifests.MOUSE_T2_ATLAS,
    local_name="mouse-t2-atlas",
    skull_stripped=True,
)

DATASETS = {d.name: d for d in (MOUSE_EPI, MOUSE_T2_ATLAS)}
NAMES = tuple(DATASETS)


def get(name: str) -> DatasetInfo:
  """The set called ``name`` (also accepts the local folder name, ``mouse-epi``).

  Raises:
    UsageError: an unknown name (the message lists the known ones).
  """
  key = str(name).replace("-", "_")
  if key not in DATASETS:
    raise UsageError(f"unknown dataset {name!r}; known: {', '.join(NAMES)}")
  return DATASETS[key]
