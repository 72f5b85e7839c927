"""Segments one user scan with a trained model folder (``rodent-gbp-segment``).

  python experiments/segment.py --input scan.nii.gz \
      --checkpoint runs/main/checkpoints --out_dir out/
  python experiments/segment.py --input dwi.nii.gz --average ...   # 4D series
  python experiments/segment.py --placement=paper ...   # the paper's placement

The brain mask is placed by rodent_gbp/placement.py's improved placement
(default; one displacement per scan, per-slice confidence and fallback) or by
the paper's per-slice method (--placement=paper).

Writes <name>_brainmask.nii.gz, <name>_labels.nii.gz, <name>_saliency.nii.gz (the
input's shape, affine and header), <name>_qc.png and <name>_slices.csv.
Expected errors end with one line "error: ..." and exit code 2.
"""

from absl import app
from absl import flags

from rodent_gbp import cli

cli.define_segment_flags(flags.FLAGS)
main = cli.segment_command(flags.FLAGS)

if __name__ == "__main__":
  app.run(main)
