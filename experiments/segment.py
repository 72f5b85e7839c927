"""Segments one user scan with a model folder (``rodent-gbp-segment``).

  python experiments/segment.py --input scan.nii.gz --model_dir runs/main/model \
      --out_dir out/
  python experiments/segment.py --input scan.nii.gz --out_dir out/   # shipped model
  python experiments/segment.py --input dwi.nii.gz ...   # 4D: masked on the mean
  python experiments/segment.py --plane=2 --voxel_scale=0.1 ...   # override the header
  python experiments/segment.py --truth=mask.nii.gz ...   # Dice and HD95 in the report
  python experiments/segment.py --placement=gbp ...   # the paper's placement

The model folder is the main job's ``<workdir>/model`` (networks,
normalisation, template bank, voxel size; ``rodent_gbp/bundle.py``); without
``--model_dir`` the folder installed with the package
(``rodent_gbp/models/mouse``). The slice axis is the header's
anterior-posterior axis unless one voxel axis is >= 2x thicker than both
others (then that one, with a warning); voxel sizes stored x10 are found by
the field of view (widest >= 150 mm with its tenth 10-80 mm). The brain mask
is placed by ``--placement`` (``rodent_gbp/placement.py``'s placers).

Writes <name>_brainmask.nii.gz (the mask that was applied), <name>_labels.nii.gz
(inside that mask), <name>_saliency.nii.gz, <name>_brain.nii.gz (the input zero
outside the mask), all in the input's shape, affine and header;
<name>_qc.png, <name>_slices.csv and <name>_report.json (every decision and
why, resolution, brain volume, CPU seconds). Expected errors end with one line
"error: ..." and exit code 2. ``--checkpoint`` is the deprecated old name of
``--model_dir`` (a warning; removed in 0.3.0).
"""

from absl import app
from absl import flags

from rodent_gbp import cli

cli.define_segment_flags(flags.FLAGS)
main = cli.segment_command(flags.FLAGS)

if __name__ == "__main__":
  app.run(main)
