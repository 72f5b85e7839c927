"""Public real rodent MRI sets: download, check, convert into the project's layout.

Named sets (``registry.NAMES``), each with its source repository, pinned
commit, licence, citation and manifest (sha256, size and path of every file):

* ``mouse_epi``: mouse fMRI EPI means, skull and surroundings present, manual
  brain masks, two sessions per animal (MIT; ``mouse_epi`` docstring); tissue
  labels are pseudo-labels (``pseudo_labels``).
* ``mouse_t2_atlas``: in-vivo mouse T2, skull-stripped, 40 structure labels
  mapped to WM / GM / CSF (GPL-3.0: nothing of it ships in the package, only
  its manifest's hashes and paths; ``mouse_t2_atlas`` docstring).

Entry points::

  folder = datasets.prepare("mouse_epi", data_root="../shared/data/mouse-epi")
  volumes = data.load_dataset(folder)       # one volume per animal (session 1)
  datasets.fetch("mouse_epi", "downloads/mouse-epi")   # the source's own layout
"""

from rodent_gbp.datasets.cache import (CONVERTER_VERSIONS, RESOLUTIONS, cache_key,
                                       default_cache_dir, prepare)
from rodent_gbp.datasets.download import FileCheck, fetch, sha256_file, verify_copy
from rodent_gbp.datasets.mouse_epi import session_dirs
from rodent_gbp.datasets.registry import DATASETS, NAMES, DatasetInfo, ManifestEntry, get

__all__ = [
    "CONVERTER_VERSIONS", "DATASETS", "RESOLUTIONS", "DatasetInfo", "FileCheck", "ManifestEntry", "NAMES",
    "cache_key", "default_cache_dir", "fetch", "get", "prepare", "session_dirs",
    "sha256_file", "verify_copy",
]
