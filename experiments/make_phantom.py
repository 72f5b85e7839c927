"""Writes the synthetic rodent MRI phantom as NIfTI (docs/design.md#phantom-and-real-data).

  python experiments/make_phantom.py --out /tmp/phantom --animals 10 --seed 0

Each animal gets ``<out>/<animal_id>/{image,labels,brainmask}.nii.gz`` (RAS+,
shape (96, 40, 96), voxels 0.375 x 0.5 x 0.375 mm) and ``meta.json``. A folder
that already holds a complete standard phantom is left as it is.
"""

from absl import app
from absl import flags

from rodent_gbp import cli
from rodent_gbp import configs
from rodent_gbp import sources
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
  config = configs.override(configs.get_config("default"), animals=_ANIMALS.value,
                            phantom_seed=_SEED.value, image_size=_SIZE.value,
                            phantom="standard")
  sources.ensure_phantom(_OUT.value, config, log=lambda msg: print(msg, flush=True))


if __name__ == "__main__":
  app.run(main)
