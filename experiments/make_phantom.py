"""Writes the synthetic rodent MRI phantom as NIfTI (docs/design.md#phantom-and-real-data).

  python experiments/make_phantom.py --out_dir /tmp/phantom --animals 10 --seed 0
  python experiments/make_phantom.py --out_dir /tmp/measured --set phantom=measured

Each animal gets ``<out_dir>/<animal_id>/{image,labels,brainmask}.nii.gz`` (RAS+,
shape (96, 40, 96), voxels 0.375 x 0.5 x 0.375 mm) and ``meta.json``. The
phantom is the one of the config (--config, default ``default``, with each
--set FIELD=VALUE applied: ``animals``, ``phantom_seed``, ``image_size`` and
``phantom``, the kind, are what it reads); --animals, --seed and --size are
short for --set animals=, phantom_seed= and image_size=. A folder that already
holds a complete phantom of that kind is left as it is.
"""

from absl import app
from absl import flags

from rodent_gbp import cli
from rodent_gbp import sources
from rodent_gbp.errors import UsageError

_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)
cli.define_config_flags(flags.FLAGS, fields=[
    cli.FieldFlag("animals", "animals", "Number of animals (default 10)"),
    cli.FieldFlag("seed", "phantom_seed", "Phantom seed (default 0)"),
    cli.FieldFlag("size", "image_size", "In-plane matrix (96: the paper's geometry)")])


@cli.run_main
def main(argv):
  cli.begin(argv)
  config = cli.config_from_flags(flags.FLAGS)
  for name, field in (("animals", "animals"), ("size", "image_size")):
    value = getattr(config, field)
    if value < 1:
      given = (f"--{name} {value}" if flags.FLAGS[name].present
               else f"--set {field}={value}")
      raise UsageError(f"{given}: must be >= 1")
  sources.ensure_phantom(_OUT_DIR.value, config, log=lambda msg: print(msg, flush=True))


if __name__ == "__main__":
  app.run(main)
