"""Writes the synthetic rodent MRI phantom as NIfTI (DESIGN.md section 2).

  python experiments/make_phantom.py --out /tmp/phantom --animals 10 --seed 0

Each animal gets ``<out>/<animal_id>/{image,labels,brainmask}.nii.gz`` (RAS+,
shape (96, 40, 96), voxels 0.375 x 0.5 x 0.375 mm) and ``meta.json``.
"""

from absl import app
from absl import flags

from rodent_gbp import cli
from rodent_gbp import phantom
from rodent_gbp.errors import UsageError

_OUT = flags.DEFINE_string("out", None, "Output folder.", required=True)
_ANIMALS = flags.DEFINE_integer("animals", 10, "Number of animals.")
_SEED = flags.DEFINE_integer("seed", 0, "Phantom seed.")
_SIZE = flags.DEFINE_integer("size", 96, "In-plane matrix (96: the paper's geometry).")


@cli.run_main
def main(argv):
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments: {argv[1:]}")
  for flag in (_ANIMALS, _SIZE):
    if flag.value < 1:
      raise UsageError(f"--{flag.name} {flag.value}: must be >= 1")
  phantom.write_phantom(_OUT.value, animals=_ANIMALS.value, seed=_SEED.value,
                        size=_SIZE.value, log=lambda msg: print(msg, flush=True))


if __name__ == "__main__":
  app.run(main)
