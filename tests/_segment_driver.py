"""Subprocess side of tests/test_batch_cli.py: ``rodent-gbp-segment`` with faults injected.

  python tests/_segment_driver.py GO_FILE STAGE -- --input a.nii.gz --out_dir out ...

Runs the console script's function (``cli.segment_main``) with the rest of the
arguments, after wrapping library functions of this process only:

* ``GO_FILE`` (``-`` for none): once the outputs' lock is held (just before
  the scan is read), wait until this file exists, so a test can act while
  this run holds the lock;
* ``STAGE``: ``none``; ``writing``: the process dies (``os._exit(9)``, no
  cleanup of any kind) at the second NIfTI file written into the temporary
  folder.
"""

from __future__ import annotations

import os
import sys
import time

import nibabel

from rodent_gbp import cli
from rodent_gbp import inference

KILLED = 9


def main() -> None:
  go, stage, sep, *argv = sys.argv[1:]
  assert sep == "--" and stage in ("none", "writing"), sys.argv
  read_input = inference.read_input

  def paused_read(*args, **kw):
    while go != "-" and not os.path.exists(go):
      time.sleep(0.05)
    return read_input(*args, **kw)

  inference.read_input = paused_read
  if stage == "writing":
    save, saved = nibabel.save, []

    def dying_save(img, path, *a, **kw):
      saved.append(path)
      if len(saved) == 2:
        os._exit(KILLED)
      return save(img, path, *a, **kw)

    inference.nib.save = dying_save
  cli.segment_main(["rodent-gbp-segment", *argv])


if __name__ == "__main__":
  main()
