"""The shipped model on real scans as a lab hands them over (``rodent-gbp-segment``, no
``--model_dir``).

  python experiments/handover.py --epi_root ../shared/data/mouse-epi \
      --rat ../shared/data/rat-t2w/sub-15_T2w.nii.gz \
      --t2_root ../shared/data/mouse-t2-atlas --out_dir runs/handover

Writes each case's inputs and outputs, handover.json and handover.md; see
``rodent_gbp.studies.handover``.
"""

import sys

from absl import app
from absl import flags

from rodent_gbp import cli
from rodent_gbp.errors import UsageError
from rodent_gbp.studies import handover

_EPI_ROOT = flags.DEFINE_string("epi_root", None, "mouse-epi copy in its source's layout.")
_EPI_ANIMALS = flags.DEFINE_list("epi_animals", list(handover.EPI_ANIMALS),
                                 "mouse-epi animals (session 1) to hand over.")
_RAT = flags.DEFINE_string("rat", None, "The rat-t2w scan (sub-15_T2w.nii.gz).")
_T2_ROOT = flags.DEFINE_string("t2_root", None, "mouse-t2-atlas copy in its source's layout.")
_T2_MICE = flags.DEFINE_list("t2_mice", None, "mouse-t2-atlas mice (default: every one).")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)


@cli.run_main
def main(argv):
  cli.begin(argv)
  if not (_EPI_ROOT.value or _RAT.value or _T2_ROOT.value):
    raise UsageError("give at least one of --epi_root, --rat and --t2_root")
  handover.run(_OUT_DIR.value, epi_root=_EPI_ROOT.value, rat_path=_RAT.value,
               t2_root=_T2_ROOT.value, epi_animals=_EPI_ANIMALS.value,
               t2_mice=_T2_MICE.value,
               command="python experiments/handover.py " + " ".join(sys.argv[1:]),
               log=lambda m: print(m, flush=True))


if __name__ == "__main__":
  app.run(main)
