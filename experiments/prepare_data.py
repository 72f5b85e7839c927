"""Downloads or reads a public rodent MRI set and converts it into the project's layout.

  python experiments/prepare_data.py --dataset mouse_epi \\
      --data_root ../shared/data/mouse-epi --out_dir DIR

Prints the converted folder (``DIR/<cache key>/``: ``<animal>/image.nii.gz``,
``labels.nii.gz``, ``brainmask.nii.gz``, ``meta.json``, and ``dataset.json``
with the set's provenance) for ``--data_dir`` of the other binaries. Without
``--data_root`` the set is downloaded from its source at the pinned commit.
A second run with the same inputs reuses the converted folder.
"""

from absl import app
from absl import flags

from rodent_gbp import cli
from rodent_gbp import datasets

_DATASET = flags.DEFINE_enum("dataset", None, list(datasets.NAMES), "The public set.",
                             required=True)
_DATA_ROOT = flags.DEFINE_string(
    "data_root", None, "A local copy in the source's own layout (e.g. "
    "../shared/data/mouse-epi); files it lacks are skipped and listed. Default: "
    "download the set.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Cache folder for the converted set (and "
                               "downloads; what the other binaries take as --data_cache). "
                               "Default: $RODENT_GBP_DATA_CACHE or "
                               "~/.cache/rodent_gbp/datasets.")
_RESOLUTION = flags.DEFINE_enum("resolution", "paper", list(datasets.RESOLUTIONS),
                                "paper: near the paper's grid (mouse_t2_atlas at 0.3 mm "
                                "in-plane, every third coronal slice); fine: those "
                                "slices at the native 0.15 mm in-plane grid; native: as "
                                "published. mouse_epi is never resampled.")
_BASE_URL = flags.DEFINE_string("base_url", None, "Download from <base_url>/<path> "
                                "instead of the source repository's raw files.")


@cli.run_main
def main(argv):
  cli.begin(argv)
  folder = datasets.prepare(_DATASET.value, data_root=_DATA_ROOT.value,
                            cache_dir=_OUT_DIR.value, resolution=_RESOLUTION.value,
                            base_url=_BASE_URL.value,
                            log=lambda msg: print(msg, flush=True))
  print(folder, flush=True)


if __name__ == "__main__":
  app.run(main)
