"""Segments one user scan with a model folder (``rodent-gbp-segment``).

  python experiments/segment.py --input scan.nii.gz --checkpoint runs/main/model \
      --out_dir out/
  python experiments/segment.py --input dwi.nii.gz --average ...   # 4D series
  python experiments/segment.py --placement=gbp ...   # the paper's placement

The model folder is the main job's ``<workdir>/model`` (networks,
normalisation, template bank, voxel size; ``rodent_gbp/bundle.py``). The brain
mask is placed by ``--placement``: ``gbp_improved`` (default; one displacement
for the scan from its GBP image, then the template animal, slice and scale
chosen on the intensity), ``gbp`` (the paper's per-slice correlation) or
``intensity`` (the same search as gbp_improved without saliency).

Writes <name>_brainmask.nii.gz (the mask that was applied), <name>_labels.nii.gz
(inside that mask), <name>_saliency.nii.gz (the input's shape, affine and
header), <name>_qc.png and <name>_slices.csv. Expected errors end with one line
"error: ..." and exit code 2.
"""

from absl import app
from absl import flags

from rodent_gbp import cli

cli.define_segment_flags(flags.FLAGS)
main = cli.segment_command(flags.FLAGS)

if __name__ == "__main__":
  app.run(main)
