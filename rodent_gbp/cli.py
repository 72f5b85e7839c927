"""Console scripts and the error edge shared by the binaries (docs/design.md#the-command-line).

A console script must point into the package, so the ``main`` functions behind
installed commands live here; ``experiments/*.py`` call the same functions.

Error edge (:func:`run_main`): an expected error (``errors.RodentGBPError``:
data, checkpoint, inference, usage and training errors, or an OSError such as a full disk or a denied permission) ends the
program with ONE line ``error: <message>`` on stderr and exit code 2, without
a traceback; the message names the file and the problem. Any other exception
(a ValueError from JAX or numpy included) is a bug and keeps its traceback. ``RODENT_GBP_TRACEBACK=1``
shows tracebacks for expected errors too.

  rodent-gbp-segment --input scan.nii.gz [--checkpoint runs/main/model] \\
      --out_dir out/ [--placement=gbp_improved|gbp|intensity] [--plane auto|0|1|2]
      [--voxel_scale 0.1] [--truth mask.nii.gz]
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable

from absl import flags

from rodent_gbp.errors import RodentGBPError, UsageError

EXIT_EXPECTED_ERROR = 2
EXPECTED_ERRORS = (RodentGBPError, OSError)


def error_line(e: BaseException) -> str:
  """The exception's message on one line (whitespace runs collapsed)."""
  text = " ".join(str(e).split()) or type(e).__name__
  return text if len(text) <= 1000 else text[:997] + "..."


def run_main(fn: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
  """Wraps a binary's ``main(argv)`` in the error edge.

  Usage in ``experiments/<binary>.py``::

    @cli.run_main
    def main(argv):
      ...

    if __name__ == "__main__":
      app.run(main)

  Raises:
    SystemExit(2) after printing ``error: <message>`` to stderr, for the
    expected errors; other exceptions propagate unchanged.
  """

  @functools.wraps(fn)
  def wrapped(argv: list[str]) -> Any:
    try:
      return fn(argv)
    except EXPECTED_ERRORS as e:
      if os.environ.get("RODENT_GBP_TRACEBACK"):
        raise
      print(f"error: {error_line(e)}", file=sys.stderr, flush=True)
      raise SystemExit(EXIT_EXPECTED_ERROR) from None

  return wrapped


# --- multi-host flags shared by the binaries -------------------------------------


def define_distributed_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """Defines --coordinator_address, --num_processes, --process_id on ``fv``."""
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0 (multi-host runs only).", flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "Number of processes (hosts).", flag_values=fv)
  flags.DEFINE_integer("process_id", None, "This process's index.", flag_values=fv)


def begin(argv: list[str], fv: flags.FlagValues = flags.FLAGS) -> None:
  """The common start of a binary's ``main``: no stray arguments, multi-host
  initialisation from the flags, library INFO chatter (Orbax) kept out of the
  progress output."""
  from absl import logging
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments: {argv[1:]}")
  start_distributed(fv)
  logging.set_verbosity(logging.WARNING)


def start_distributed(fv: flags.FlagValues = flags.FLAGS) -> None:
  """``jax.distributed.initialize`` from the flags of :func:`define_distributed_flags`."""
  from rodent_gbp import parallel
  parallel.initialize_distributed(fv.coordinator_address, fv.num_processes, fv.process_id)


# --- rodent-gbp-segment ---------------------------------------------------------------


_PLACER_HELP = {
    "gbp_improved": "one displacement for the scan from its log GBP image against the "
                    "reference's raw-slice appearance, then the template animal, "
                    "neighbouring slice and scale chosen on the intensity",
    "gbp": "the paper's correlation of the reference template with the enhanced GBP "
           "image, one displacement per slice or per scan as the model's config says "
           "(misplaces the mask on the phantom, README)",
    "intensity": "the same search as gbp_improved located by the plain intensity, no "
                 "saliency"}


def _placer_help(name: str, fn: Callable[..., Any]) -> str:
  """A placer's line in --help: the text above, else its docstring's first line."""
  text = _PLACER_HELP.get(name) or (fn.__doc__ or "").strip().split("\n")[0].rstrip(".")
  text = text.replace("``", "")            # reST literals read badly in --help
  return f"{name}: {text}" if text else name


def define_segment_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags of ``rodent-gbp-segment`` on ``fv``.

  The ``--placement`` choices are the keys of ``placement.PLACERS``, so a
  placer registered there is offered here without a change.
  """
  from rodent_gbp import placement
  from rodent_gbp import scan
  flags.DEFINE_string("input", None, "The scan to segment (NIfTI .nii or .nii.gz).",
                      flag_values=fv)
  flags.DEFINE_string("checkpoint", None, "A model folder (bundle), e.g. the main job's "
                      "<workdir>/model (networks, normalisation, template bank, voxel "
                      "size). Default: the model folder installed with the package "
                      "(rodent_gbp/models/mouse_epi).", flag_values=fv)
  flags.DEFINE_string("out_dir", None, "Output folder (created if needed).",
                      flag_values=fv)
  # A string, checked by segment_scan: a bad value ends in the one-line error.
  flags.DEFINE_string(
      "plane", "auto",
      f"Slicing plane, one of {', '.join(scan.PLANE_CHOICES)}. auto (default): across the header's anterior-posterior axis, "
      f"unless one voxel axis is >= {scan.THICK_RATIO:g}x thicker than both others: "
      "then across that axis, with a warning. coronal, axial, sagittal: by the "
      "header's RAS orientation. 0, 1, 2: across that voxel axis of the file.",
      flag_values=fv)
  flags.DEFINE_float(
      "voxel_scale", None,
      "Factor for the header's voxel sizes, e.g. 0.1 for sizes stored x10. Default: "
      f"auto, 0.1 when the widest field of view is >= {scan.X10_MIN_FOV_MM:g} mm and "
      f"its tenth is {scan.HEAD_FOV_MM[0]:g}-{scan.HEAD_FOV_MM[1]:g} mm (a rodent head "
      "is about 20-35 mm across), else 1.", flag_values=fv)
  flags.DEFINE_string("truth", None, "A brain mask on the input's grid (nonzero = "
                      "brain): the report gives Dice and HD95 (mm) against it.",
                      flag_values=fv)
  flags.DEFINE_integer("volume", None, "For a 4D series: segment this volume (0-based) "
                       "instead of the mean.", flag_values=fv)
  flags.DEFINE_bool("average", False, "For a 4D series: segment the mean of its volumes "
                    "(what a 4D series gets without --volume).", flag_values=fv)
  flags.DEFINE_string("name", None, "Output file prefix; default: the input's file name "
                      "without .nii[.gz].", flag_values=fv)
  flags.DEFINE_bool("overwrite", False, "Replace existing outputs of the same name.",
                    flag_values=fv)
  flags.DEFINE_bool("qc", True, "Write the QC figure <name>_qc.png.", flag_values=fv)
  flags.DEFINE_enum("placement", "auto", ["auto", *placement.PLACERS],
                    "How the brain mask is placed (rodent_gbp/placement.py). auto "
                    "(default): supervised where the model folder has an extractor "
                    "network (the shipped one has), else gbp_improved. "
                    + ". ".join(_placer_help(k, f) for k, f in placement.PLACERS.items())
                    + ".", flag_values=fv)
  # A string, checked by segment_scan: a bad value ends in the one-line error.
  flags.DEFINE_string("displacement", None, "For --placement gbp: one displacement per "
                      "slice (the paper config's, docs/design.md#readings-the-paper-leaves-open) or per scan (volume: the argmax of the "
                      "sum of the slices' correlation maps). Default: the model's config "
                      "(volume for a model of the default config; the shipped model was "
                      "built with slice).", flag_values=fv)


def segment_command(fv: flags.FlagValues = flags.FLAGS) -> Callable[[list[str]], None]:
  """``main(argv)`` of ``rodent-gbp-segment`` reading the flags in ``fv``."""

  @run_main
  def main(argv: list[str]) -> None:
    from rodent_gbp import inference
    if len(argv) > 1:
      raise UsageError(f"unexpected arguments {argv[1:]}")
    # Returns None: absl's app.run exits with main's return value.
    inference.segment_scan(
        fv["input"].value, fv["checkpoint"].value, fv["out_dir"].value,
        plane=fv["plane"].value, volume=fv["volume"].value, average=fv["average"].value,
        voxel_scale=fv["voxel_scale"].value, truth=fv["truth"].value,
        name=fv["name"].value, overwrite=fv["overwrite"].value, qc=fv["qc"].value,
        placement=fv["placement"].value, displacement=fv["displacement"].value,
        log=lambda msg: print(msg, flush=True))

  return main


def segment_main(argv: list[str] | None = None) -> None:
  """The ``rodent-gbp-segment`` console script (flags on a private FlagValues)."""
  argv = list(sys.argv if argv is None else argv)
  fv = flags.FlagValues()
  define_segment_flags(fv)
  if any(a in ("-h", "--help", "-help") for a in argv[1:]):
    print(f"usage: rodent-gbp-segment --input SCAN [--checkpoint FOLDER] --out_dir OUT\n\n"
          f"{fv.get_help()}")
    raise SystemExit(0)
  try:
    rest = fv(argv)
  except flags.Error as e:
    print(f"error: {error_line(e)}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_EXPECTED_ERROR) from None
  segment_command(fv)(rest)


if __name__ == "__main__":
  segment_main()
