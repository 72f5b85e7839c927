"""The main job: the paper's experiment end to end.

    python experiments/reproduce.py --workdir runs/main
    python experiments/reproduce.py --workdir runs/eval --checkpoint runs/main/checkpoints
    python experiments/reproduce.py --workdir runs/main --nofigures   # no PNG figures
    python experiments/reproduce.py --dataset mouse_epi \
        --data_root ../shared/data/mouse-epi --workdir runs/epi       # a public set
    python experiments/reproduce.py --dataset mouse_t2_atlas --data_root DIR \
        --split_file experiments/folds/mouse_t2_atlas/fold0.json --workdir runs/t2

With --checkpoint the checkpoint's own config (its config.json) is used; a
--config given as well must name that same config, else the run is refused.

Multi-host: the same command on every host, plus --coordinator_address,
--num_processes and --process_id (README, "Many devices, many hosts").
"""

from absl import app
from absl import flags

from rodent_gbp import cli
from rodent_gbp import configs
from rodent_gbp import datasets
from rodent_gbp import phantom
from rodent_gbp.errors import UsageError
from rodent_gbp import job

FLAGS = flags.FLAGS

_WORKDIR = flags.DEFINE_string("workdir", "runs/main", "Output folder.")
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
_CONFIG = flags.DEFINE_enum(
    "config", "default", sorted(configs.CONFIGS),
    "Named configuration. With --checkpoint the checkpoint's stored config is "
    "used; a --config given explicitly must then match it (else exit 2).")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A training checkpoint folder (e.g. runs/main/checkpoints); skips "
    "training and uses the config stored there.")
_SEED = flags.DEFINE_integer("seed", None, "Overrides the config's seed.")
_PHANTOM = flags.DEFINE_enum(
    "phantom", None, list(phantom.KINDS), "The phantom's kind when no data is given "
    "(rodent_gbp.phantom.KINDS; default the config's, standard): measured brings the "
    "phantom's appearance to the statistics measured on the real sets.")
_SCORE = flags.DEFINE_enum(
    "saliency_score", None, list(configs.SALIENCY_SCORES), "What the saliency target sums over "
    "the pixels (default the config's, probability: the paper's): the template bank, the "
    "GBP placers and the saliency figures use it, and the model folder keeps it for "
    "rodent-gbp-segment. With --checkpoint it must match the checkpoint's config.")
_DISPLACEMENT = flags.DEFINE_enum(
    "displacement", None, list(configs.DISPLACEMENTS), "The paper's placement (gbp): one "
    "displacement per slice (the paper config's, docs/design.md#readings-the-paper-leaves-open) or one per acquisition from the sum of its "
    "slices' correlation maps (default the config's: volume in default, slice in paper). "
    "Evaluation only, so it may differ from a --checkpoint's config.")
_FIGURES = flags.DEFINE_bool("figures", True, "Write the PNG figures (--nofigures skips them).")
cli.define_distributed_flags()

_SHOWN_DIFFERENCES = 4  # fields named in the conflict message


def run_config() -> configs.Config:
  """The config of the run: the named one, or the checkpoint's own.

  Raises:
    UsageError: --config given explicitly next to --checkpoint and the
      checkpoint's stored config differs from it (the seed aside: --seed
      overrides it anyway).
  """
  if _CHECKPOINT.value is None:
    return configs.override(configs.get_config(_CONFIG.value), phantom=_PHANTOM.value,
                            saliency_score=_SCORE.value, displacement=_DISPLACEMENT.value)
  from rodent_gbp.training import checkpoint
  stored = checkpoint.read_config(_CHECKPOINT.value)
  if _PHANTOM.value is not None and _PHANTOM.value != stored.phantom:
    raise UsageError(f"--phantom {_PHANTOM.value} conflicts with the config of --checkpoint "
                     f"{_CHECKPOINT.value} (phantom {stored.phantom!r}); leave out --phantom")
  if _SCORE.value is not None and _SCORE.value != stored.saliency_score:
    raise UsageError(f"--saliency_score {_SCORE.value} conflicts with the config of "
                     f"--checkpoint {_CHECKPOINT.value} (saliency_score "
                     f"{stored.saliency_score!r}); leave out --saliency_score")
  if FLAGS["config"].present:
    diff = configs.differences(configs.get_config(_CONFIG.value), stored, ignore=("seed",))
    if diff:
      shown = list(diff.items())[:_SHOWN_DIFFERENCES]
      listed = ", ".join(f"{k} {mine!r} vs {theirs!r}" for k, (mine, theirs) in shown)
      if len(diff) > len(shown):
        listed += f" and {len(diff) - len(shown)} more fields"
      raise UsageError(
          f"--config {_CONFIG.value} conflicts with the config of --checkpoint "
          f"{_CHECKPOINT.value} ({listed}); leave out --config to use the checkpoint's")
  return configs.override(stored, displacement=_DISPLACEMENT.value)


@cli.run_main  # expected errors: one "error: ..." line, exit code 2
def main(argv):
  cli.begin(argv)
  job.run(run_config(), _WORKDIR.value,
                      data_dir=_DATA_DIR.value, dataset=_DATASET.value,
                      data_root=_DATA_ROOT.value, data_cache=_DATA_CACHE.value,
                      resolution=_RESOLUTION.value, split=_SPLIT_FILE.value,
                      checkpoint=_CHECKPOINT.value,
                      seed=_SEED.value, figures=_FIGURES.value,
                      log=lambda msg: print(msg, flush=True))


if __name__ == "__main__":
  app.run(main)
