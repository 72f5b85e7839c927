"""Scans in other axis orders and with lying headers through ``rodent-gbp-segment``.

  python experiments/orientation_variants.py \\
      --rat ../shared/data/rat-t2w/sub-15_T2w.nii.gz --epi_animals 19,20 \\
      --out_dir runs/orientation

Every scan is written in six geometries (``rodent_gbp.studies.orientation``:
as stored, two other axis orders, the header's anterior-posterior and
superior-inferior directions swapped, isotropic, isotropic with the swap) and
segmented with the model folder (default: the shipped one); each mask is mapped
back to the stored grid by the known transform and compared. ``mouse_epi``
animals come from the converted cache (RAS, the manual mask as truth); the
default 19-22 are the shipped model's test animals. Writes ``rows.json`` and
``variants.md``; the QC figure of every variant lies in its folder.
"""

import pathlib
import sys

from absl import app
from absl import flags
import nibabel as nib
import numpy as np

from rodent_gbp import cli
from rodent_gbp import fileio
from rodent_gbp import inference
from rodent_gbp import nifti
from rodent_gbp.datasets import cache
from rodent_gbp.studies import orientation

REPO = pathlib.Path(__file__).resolve().parents[1]
_RAT = flags.DEFINE_string("rat", None, "The rat-t2w scan (sub-15_T2w.nii.gz); none: skipped.")
_EPI_ROOT = flags.DEFINE_string("epi_root", str(REPO.parent / "shared" / "data" / "mouse-epi"),
                                "mouse-epi in its source's layout.")
_EPI_ANIMALS = flags.DEFINE_list("epi_animals", ["19", "20", "21", "22"],
                                 "mouse_epi animals (session 1).")
_DATA_CACHE = flags.DEFINE_string("data_cache", None, "Where converted sets are kept.")
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Model folder (default: the shipped one).")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)


@cli.run_main
def main(argv):
  cli.begin(argv)
  out = pathlib.Path(_OUT_DIR.value)
  bundle = inference.load_model(_MODEL_DIR.value)[0]
  scans = []
  if _RAT.value:
    image, img = nifti.read(_RAT.value, series=False)
    scans.append(("rat_t2w", image, img.affine, None))
  if _EPI_ANIMALS.value:
    epi = cache.prepare("mouse_epi", data_root=_EPI_ROOT.value, cache_dir=_DATA_CACHE.value,
                        resolution="native", log=print)
    for a in _EPI_ANIMALS.value:
      img = nib.load(pathlib.Path(epi) / a / "image.nii.gz")
      truth = np.asarray(nib.load(pathlib.Path(epi) / a / "brainmask.nii.gz").dataobj) > 0
      scans.append((f"epi_{a}", np.asarray(img.dataobj, np.float32), img.affine, truth))
  rows = []
  for name, image, affine, truth in scans:
    rows += orientation.run(name, image, affine, truth, out, bundle=bundle,
                            log=lambda m: None)
  command = "python experiments/orientation_variants.py " + " ".join(sys.argv[1:])
  fileio.write_json(out / "rows.json", {"command": command, "rows": rows})
  (out / "variants.md").write_text(orientation.markdown(rows, command))
  print(orientation.markdown(rows, command))


if __name__ == "__main__":
  app.run(main)
