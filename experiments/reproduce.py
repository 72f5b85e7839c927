"""The main job: the paper's experiment end to end.

    python experiments/reproduce.py --workdir runs/main
    python experiments/reproduce.py --workdir runs/eval --checkpoint_dir runs/main/checkpoints
    python experiments/reproduce.py --workdir runs/main --nofigures   # no PNG figures
    python experiments/reproduce.py --dataset mouse_epi \
        --data_root ../shared/data/mouse-epi --workdir runs/epi       # a public set
    python experiments/reproduce.py --dataset mouse_t2_atlas --data_root DIR \
        --split_file experiments/folds/mouse_t2_atlas/fold0.json --workdir runs/t2
    python experiments/reproduce.py --workdir runs/lr --set learning_rate=0.01 \
        --set epochs=5                                                # any config field

The run's config is --config (a name of configs.get_config) with each
--set FIELD=VALUE applied (--seed, --phantom, --saliency_score and
--displacement are short for --set of that field). With --checkpoint_dir the
checkpoint's own config (its config.json) is used; a --config given as well
must name that same config, and a field set must equal the checkpoint's
(seed and displacement aside), else the run is refused.

Multi-host: the same command on every host, plus --coordinator_address,
--num_processes and --process_id (README, "Many devices, many hosts").
"""

from absl import app
from absl import flags

from rodent_gbp import cli
from rodent_gbp import configs
from rodent_gbp import datasets
from rodent_gbp.errors import UsageError
from rodent_gbp import job

FLAGS = flags.FLAGS

_WORKDIR = flags.DEFINE_string("workdir", "runs/main", "The run's folder (data, "
                                "checkpoints, model, results, figures).")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Dataset folder (<animal>/image.nii.gz, labels.nii.gz, "
    "brainmask.nii.gz); default: write the synthetic phantom into the workdir.")
_DATASET = flags.DEFINE_enum(
    "dataset", None, ["mouse_epi", "mouse_t2_atlas"],
    "A public set (rodent_gbp.datasets), converted once into --data_cache; "
    "downloaded from its source at the pinned commit unless --data_root is given.")
_DATA_ROOT = flags.DEFINE_string(
    "data_root", None, "With --dataset: a local copy in the source's own layout (e.g. "
    "../shared/data/mouse-epi); files it lacks are skipped and listed.")
_DATA_CACHE = flags.DEFINE_string(
    "data_cache", None, "With --dataset: where converted sets (and downloads) are kept. "
    "Default: $RODENT_GBP_DATA_CACHE or ~/.cache/rodent_gbp/datasets.")
_RESOLUTION = flags.DEFINE_enum(
    "resolution", "paper", list(datasets.RESOLUTIONS),
    "With --dataset mouse_t2_atlas: paper (0.3 mm in-plane) or fine (0.15 mm in-plane), "
    "both every third coronal slice, or native (0.15 mm); mouse_epi is never resampled.")
_SPLIT_FILE = flags.DEFINE_string(
    "split_file", None, 'JSON {"train": [ids], "val": [ids], "test": [ids]} replacing '
    "the split drawn from the config's split_seed (e.g. a fold of "
    "experiments/folds/).")
_CHECKPOINT_DIR = flags.DEFINE_string(
    "checkpoint_dir", None, "A training checkpoint folder (Orbax; e.g. "
    "runs/main/checkpoints); skips training and uses the config stored there.")
cli.define_config_flags(
    FLAGS, config_help="With --checkpoint_dir the checkpoint's stored config is used; a "
    "--config given explicitly must then match it (else exit 2).",
    fields=[
        cli.FieldFlag("seed", "seed", "Overrides the config's seed (init, data order)"),
        cli.FieldFlag(
            "phantom", "phantom", "The phantom's kind when no data is given "
            "(rodent_gbp.phantom.KINDS; standard in every named config): measured brings "
            "the phantom's appearance to the statistics measured on the real sets"),
        cli.FieldFlag(
            "saliency_score", "saliency_score", "What the saliency target sums over the "
            "pixels (probability: the paper's): the template bank, the GBP placers and the "
            "saliency figures use it, and the model folder keeps it for rodent-gbp-segment. "
            "With --checkpoint_dir it must match the checkpoint's config"),
        cli.FieldFlag(
            "displacement", "displacement", "The paper's placement (gbp): one displacement "
            "per slice (the paper config's, "
            "docs/design.md#readings-the-paper-leaves-open) or one per acquisition from the "
            "sum of its slices' correlation maps (volume in default, slice in paper). "
            "Evaluation only, so it may differ from a --checkpoint_dir's config")])
_FIGURES = flags.DEFINE_bool("figures", True, "Write the PNG figures (--nofigures skips them).")
cli.define_distributed_flags()

_SHOWN_DIFFERENCES = 4  # fields named in the conflict message
# Fields a run from a checkpoint may set to other values than the checkpoint's
# config: the seed (job.run overrides it anyway) and the evaluation-only displacement.
CHECKPOINT_FREE_FIELDS = ("seed", "displacement")


def run_config() -> configs.Config:
  """The config of the run: the named one with --set applied, or the checkpoint's own.

  Raises:
    UsageError: --config given explicitly next to --checkpoint_dir and the
      checkpoint's stored config differs from it (the seed aside: --seed
      overrides it anyway), or a field set (--set, --phantom, ...) to another
      value than the checkpoint's, but for CHECKPOINT_FREE_FIELDS.
  """
  if _CHECKPOINT_DIR.value is None:
    return cli.config_from_flags(FLAGS)
  from rodent_gbp.training import checkpoint
  ckpt = _CHECKPOINT_DIR.value
  stored = checkpoint.read_config(ckpt)
  changes = cli.config_changes(FLAGS)
  for field, (value, given) in changes.items():
    if field not in CHECKPOINT_FREE_FIELDS and value != getattr(stored, field):
      raise UsageError(f"{given} conflicts with the config of --checkpoint_dir {ckpt} "
                       f"({field} {getattr(stored, field)!r}); leave it out")
  if FLAGS["config"].present:
    name = FLAGS["config"].value
    diff = configs.differences(configs.get_config(name), stored, ignore=("seed",))
    if diff:
      shown = list(diff.items())[:_SHOWN_DIFFERENCES]
      listed = ", ".join(f"{k} {mine!r} vs {theirs!r}" for k, (mine, theirs) in shown)
      if len(diff) > len(shown):
        listed += f" and {len(diff) - len(shown)} more fields"
      raise UsageError(
          f"--config {name} conflicts with the config of --checkpoint_dir "
          f"{ckpt} ({listed}); leave out --config to use the checkpoint's")
  return configs.override(stored, **{f: v for f, (v, _) in changes.items()})


@cli.run_main  # expected errors: one "error: ..." line, exit code 2
def main(argv):
  cli.begin(argv)
  job.run(run_config(), _WORKDIR.value,
          data_dir=_DATA_DIR.value, dataset=_DATASET.value,
          data_root=_DATA_ROOT.value, data_cache=_DATA_CACHE.value,
          resolution=_RESOLUTION.value, split=_SPLIT_FILE.value,
          checkpoint_dir=_CHECKPOINT_DIR.value, figures=_FIGURES.value,
          log=lambda msg: print(msg, flush=True))


if __name__ == "__main__":
  app.run(main)
