"""Console scripts and the error edge shared by the binaries (docs/design.md#the-command-line).

A console script must point into the package, so the ``main`` functions behind
installed commands live here; ``experiments/*.py`` call the same functions.

Error edge (:func:`run_main`): an expected error (``errors.RodentGBPError``:
data, checkpoint, inference, usage and training errors, or an OSError such as a full disk or a denied permission) ends the
program with ONE line ``error: <message>`` on stderr and exit code 2, without
a traceback; the message names the file and the problem. Any other exception
(a ValueError from JAX or numpy included) is a bug and keeps its traceback. ``RODENT_GBP_TRACEBACK=1``
shows tracebacks for expected errors too.

  rodent-gbp-segment --input scan.nii.gz [--model_dir runs/main/model] \\
      --out_dir out/ [--placement=gbp_improved|gbp|intensity] [--plane auto|0|1|2]
      [--voxel_scale 0.1] [--truth mask.nii.gz]
  rodent-gbp-segment --input scans/ --out_dir out/ [--shard 0/4] [--skip_existing]
  rodent-gbp-segment --merge_summaries 'out/summary_shard*of4.csv' --out_dir out/

Many scans in one call, shards and exit codes (0, 2, and 3 when some scans of
many failed): ``rodent_gbp.batch``.

(``--checkpoint`` is the deprecated old name of ``--model_dir``: accepted with a
warning until 0.3.0.)

Shared by the binaries: :func:`begin` (the start of every ``main``), the
multi-host flags (:func:`define_distributed_flags`) and the one way to
configure a run (:func:`define_config_flags`, :func:`config_from_flags`):
``--config NAME`` picks a named ``configs.Config``, the repeatable
``--set FIELD=VALUE`` changes any of its fields, and the per-field flags a
binary keeps (``--epochs 3``) are the same as ``--set epochs=3``.

Folder flags have one meaning each, in every binary: ``--workdir`` a run's
folder (everything the run writes), ``--model_dir`` a model folder (bundle:
``bundle.json`` ...), ``--checkpoint_dir`` an Orbax training-checkpoint folder,
``--out_dir`` a folder of written data or figures.

Imports of the package stay inside the functions here, the one exception to
"imports at module top" besides figure code: ``import rodent_gbp.cli`` (every
binary, ``--version``, ``--merge_summaries``, a flag error) loads no JAX, and
the extractor's training flags (``rodent_gbp.training.flags``) load only in the
binaries that train, so ``rodent-gbp-segment`` loads no training code.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import typing
from typing import Any, Callable, Sequence

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


def _key_flags_of_caller(fv: flags.FlagValues, names) -> None:
  """Lists the flags ``names`` (defined here, for a binary) in its ``--help`` too:
  key flags of the first calling module outside this one."""
  frame = sys._getframe(1)
  while frame is not None and frame.f_globals.get("__name__") == __name__:
    frame = frame.f_back
  module = frame.f_globals.get("__name__") if frame is not None else None
  if module == "__main__":
    module = sys.argv[0]  # how absl names a script's module (its --help)
  if module:
    for name in names:
      fv.register_key_flag_for_module(module, fv[name])


def define_distributed_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """Defines --coordinator_address, --num_processes, --process_id on ``fv``."""
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0 (multi-host runs only).", flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "Number of processes (hosts).", flag_values=fv)
  flags.DEFINE_integer("process_id", None, "This process's index.", flag_values=fv)
  _key_flags_of_caller(fv, ("coordinator_address", "num_processes", "process_id"))


def begin(argv: list[str], fv: flags.FlagValues = flags.FLAGS) -> None:
  """The common start of every binary's ``main``: no stray arguments, multi-host
  initialisation from the flags (where the binary defines them,
  :func:`define_distributed_flags`), library INFO chatter (Orbax) kept out of
  the progress output.

  Raises:
    UsageError: positional arguments after the flags.
  """
  from absl import logging
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments: {argv[1:]}")
  if "coordinator_address" in fv:
    start_distributed(fv)
  logging.set_verbosity(logging.WARNING)


def start_distributed(fv: flags.FlagValues = flags.FLAGS) -> None:
  """``jax.distributed.initialize`` from the flags of :func:`define_distributed_flags`."""
  from rodent_gbp import parallel
  parallel.initialize_distributed(fv.coordinator_address, fv.num_processes, fv.process_id)


# --- one way to configure a run: --config NAME, --set FIELD=VALUE ------------------


@dataclasses.dataclass(frozen=True)
class FieldFlag:
  """A binary's own flag for one ``configs.Config`` field: ``--<name> V`` is
  ``--set <field>=V`` (e.g. make_phantom's ``--size`` for ``image_size``)."""

  name: str
  field: str
  help: str = ""


# Attribute set on a Flag object that stands for a config field (its field's name).
_FIELD_ATTR = "config_field"


def _field_types() -> dict[str, Any]:
  """``{field: type}`` of ``configs.Config`` (int, float, bool, str, tuple[int, ...])."""
  from rodent_gbp import configs
  return typing.get_type_hints(configs.Config)


def _field_choices() -> dict[str, tuple[str, ...]]:
  """The text fields whose values come from a fixed list."""
  from rodent_gbp import configs
  from rodent_gbp import guided
  from rodent_gbp import phantom
  return {"phantom": tuple(phantom.KINDS), "saliency_score": tuple(configs.SALIENCY_SCORES),
          "displacement": tuple(configs.DISPLACEMENTS),
          "saliency_method": tuple(guided.METHODS)}


def _type_name(kind: Any) -> str:
  return {int: "an integer", float: "a number", bool: "true or false",
          str: "text"}.get(kind, "comma-separated integers")


def parse_field(field: str, text: str, *, given: str | None = None) -> Any:
  """The value of config field ``field`` read from ``text`` by the field's type.

  ``int``: ``3``; ``float``: ``0.01``, ``1e-3``; ``bool``: true/false (yes/no,
  1/0); ``tuple[int, ...]``: ``1,2,3``; text: as given (checked against the
  field's choices where it has a fixed list).

  Raises:
    UsageError: no such field, or a value the field's type cannot take; the
      one line names the field (and ``given``, how it was given).
  """
  given = given or f"--set {field}={text}"
  types = _field_types()
  if field not in types:
    raise UsageError(f"{given}: {field!r} is no config field; the fields: "
                     f"{', '.join(types)}")
  kind = types[field]
  try:
    if kind is bool:
      low = text.strip().lower()
      if low not in ("true", "false", "yes", "no", "1", "0"):
        raise ValueError(text)
      value: Any = low in ("true", "yes", "1")
    elif kind is int:
      value = int(text)
    elif kind is float:
      value = float(text)
    elif kind is str:
      value = text
    else:
      value = tuple(int(part) for part in text.split(","))
  except ValueError:
    raise UsageError(f"{given}: config field {field} takes {_type_name(kind)}, "
                     f"not {text!r}") from None
  choices = _field_choices().get(field)
  if choices is not None and value not in choices:
    raise UsageError(f"{given}: config field {field} is one of {', '.join(choices)}")
  return value


def define_config_flags(fv: flags.FlagValues = flags.FLAGS, *, default: str = "default",
                        fields: Sequence[str | FieldFlag] = (), named: bool = True,
                        config_help: str = "") -> None:
  """Defines the configuration flags of a binary that builds a ``configs.Config``.

  * ``--config NAME``: a name of ``configs.get_config`` (``default``: its
    default); left out with ``named=False`` (a binary whose base config is
    not a named one, e.g. the extractor's);
  * ``--set FIELD=VALUE``, repeatable: any field of ``configs.Config``, the
    value read by the field's type (:func:`parse_field`);
  * one flag per entry of ``fields``: a field's name (``"epochs"`` defines
    ``--epochs``) or a :class:`FieldFlag`; typed like the field, default None
    (the config's value). ``--epochs 3`` is ``--set epochs=3``.

  :func:`config_from_flags` reads them back.
  """
  from rodent_gbp import configs
  before = set(fv)
  if named:
    flags.DEFINE_enum("config", default, sorted(configs.CONFIGS),
                      "Named configuration (configs.get_config); --set changes its "
                      "fields." + (f" {config_help}" if config_help else ""), flag_values=fv)
  flags.DEFINE_multi_string(
      "set", [], "FIELD=VALUE, repeatable: sets one field of the configuration (any "
      "field of rodent_gbp.configs.Config), e.g. --set epochs=3 --set learning_rate=0.01; "
      "the value is read by the field's type (bool: true/false; gradient_classes: 1,2,3).",
      flag_values=fv)
  define_field_flags(fv, fields)
  _key_flags_of_caller(fv, sorted(set(fv) - before))


def define_field_flags(fv: flags.FlagValues, fields: Sequence[str | FieldFlag]) -> None:
  """One flag per config field (see :func:`define_config_flags`)."""
  types, choices = _field_types(), _field_choices()
  for spec in fields:
    spec = FieldFlag(spec, spec) if isinstance(spec, str) else spec
    kind = types[spec.field]
    text = (f"{spec.help.rstrip('.')}. " if spec.help else "") + (
        f"Sets config.{spec.field} (the same as --set {spec.field}=...); default: the "
        "config's.")
    if spec.field in choices:
      flags.DEFINE_enum(spec.name, None, list(choices[spec.field]), text, flag_values=fv)
    elif kind is bool:
      flags.DEFINE_bool(spec.name, None, text, flag_values=fv)
    elif kind is int:
      flags.DEFINE_integer(spec.name, None, text, flag_values=fv)
    elif kind is float:
      flags.DEFINE_float(spec.name, None, text, flag_values=fv)
    elif kind is str:
      flags.DEFINE_string(spec.name, None, text, flag_values=fv)
    else:
      flags.DEFINE_list(spec.name, None, text, flag_values=fv)
    setattr(fv[spec.name], _FIELD_ATTR, spec.field)


def mark_config_fields(fv: flags.FlagValues, names: Sequence[str]) -> None:
  """Marks flags defined elsewhere (same name as the field) as config fields, so
  that a ``--set`` of the same field given beside them is refused."""
  types = _field_types()
  for name in names:
    if name not in types:
      raise ValueError(f"{name!r} is no config field")
    setattr(fv[name], _FIELD_ATTR, name)


def define_extractor_config_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """The config flags of the binaries that train the brain extractor: the
  extractor's own flags (``rodent_gbp.training.flags``: --features, --epochs,
  ...; those named like a config field stand for that field) and ``--set`` over
  the extractor's config. No ``--config``: no named config is the extractor's."""
  from rodent_gbp.training import flags as training_flags
  before = set(fv)
  training_flags.define_extractor_flags(fv)
  mark_config_fields(fv, sorted((set(fv) - before) & set(_field_types())))
  _key_flags_of_caller(fv, sorted(set(fv) - before))
  define_config_flags(fv, named=False)


def extractor_config_from_flags(fv: flags.FlagValues = flags.FLAGS):
  """(``configs.Config``, ``augment.AugmentOptions``) of the extractor's flags
  (:func:`define_extractor_config_flags`), every ``--set`` applied."""
  from rodent_gbp.training import flags as training_flags
  config, options = training_flags.extractor_settings(fv)
  return config_from_flags(fv, base=config), options


def config_changes(fv: flags.FlagValues = flags.FLAGS) -> dict[str, tuple[Any, str]]:
  """``{field: (value, how it was given)}`` from the field flags given and ``--set``.

  Raises:
    UsageError: ``--set`` without ``=``, an unknown field or a bad value, or one
      field given twice with different values (``--epochs 2 --set epochs=3``).
  """
  changes: dict[str, tuple[Any, str]] = {}

  def add(field: str, value: Any, given: str) -> None:
    if field in changes and changes[field][0] != value:
      raise UsageError(f"{given} conflicts with {changes[field][1]}: config field {field} "
                       "given twice")
    changes[field] = (value, given)

  seen = set()
  for name in list(fv):
    flag = fv[name]
    field = getattr(flag, _FIELD_ATTR, None)
    if field is None or id(flag) in seen:
      continue
    seen.add(id(flag))
    if not (flag.present or (flag.default is None and flag.value is not None)):
      continue
    value = flag.value
    if isinstance(value, bool):
      given = f"--{flag.name}" if value else f"--no{flag.name}"
    elif isinstance(value, list):
      given = f"--{flag.name} {','.join(value)}"
      value = parse_field(field, ",".join(value), given=given)
    else:
      given = f"--{flag.name} {value}"
    add(field, value, given)
  for item in (fv["set"].value or []) if "set" in fv else []:
    field, sep, text = item.partition("=")
    field = field.strip()
    if not sep or not field:
      raise UsageError(f"--set {item}: expected FIELD=VALUE, e.g. --set epochs=3")
    add(field, parse_field(field, text.strip()), f"--set {item}")
  return changes


def config_from_flags(fv: flags.FlagValues = flags.FLAGS, *, base=None):
  """The run's ``configs.Config``: ``base`` (default: the one ``--config`` names)
  with the field flags given and every ``--set`` applied.

  Raises:
    UsageError: as :func:`config_changes`, or a value the config refuses.
  """
  from rodent_gbp import configs
  if base is None:
    base = configs.get_config(fv["config"].value)
  return configs.override(base, **{f: v for f, (v, _) in config_changes(fv).items()})


# --- rodent-gbp-segment ---------------------------------------------------------------

CHECKPOINT_FLAG_REMOVED_IN = "0.3.0"
CHECKPOINT_FLAG_WARNING = ("warning: --checkpoint is deprecated, use --model_dir; it will be "
                           f"removed in {CHECKPOINT_FLAG_REMOVED_IN}")


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
  before = set(fv)
  flags.DEFINE_multi_string(
      "input", None, "The scan to segment (NIfTI .nii or .nii.gz), or a folder of scans "
      "(every .nii / .nii.gz in it but masks and this tool's outputs); repeatable. Many "
      "scans: one process, one model load, progress per scan, a failing scan listed and "
      "the others go on, <out_dir>/summary.csv and index.html; a truth mask "
      "<stem>_mask.nii[.gz] beside a scan gives Dice and HD95.", flag_values=fv)
  flags.DEFINE_bool("skip_existing", False, "Skip a scan whose report <name>_report.json "
                    "exists in --out_dir (listed as skipped).", flag_values=fv)
  flags.DEFINE_string("shard", None, "K/N: segment every N-th scan of the inputs from the "
                      "K-th (0-based, as cluster job arrays number their tasks); writes "
                      "summary_shard<K>of<N>.csv. --merge_summaries joins the shards'.",
                      flag_values=fv)
  flags.DEFINE_list("merge_summaries", None, "Shards' summary files (comma-separated paths "
                    "or glob patterns): merged into <out_dir>/summary.csv and index.html; "
                    "nothing is segmented (takes --out_dir only).", flag_values=fv)
  flags.DEFINE_bool("compile_cache", True, "JAX's persistent compilation cache (compiled "
                    "programs kept between calls): in $JAX_COMPILATION_CACHE_DIR when set, "
                    "else $XDG_CACHE_HOME/rodent_gbp/jax or ~/.cache/rodent_gbp/jax. "
                    "--nocompile_cache turns it off.", flag_values=fv)
  flags.DEFINE_bool("version", False, "Print the version and exit.", flag_values=fv)
  flags.DEFINE_string("model_dir", None, "A model folder (bundle), e.g. the main job's "
                      "<workdir>/model (networks, normalisation, template bank, voxel "
                      "size). Default: the model folder installed with the package "
                      "(rodent_gbp/models/mouse).", flag_values=fv)
  flags.DEFINE_string("checkpoint", None, "Deprecated: the old name of --model_dir "
                      f"(removed in {CHECKPOINT_FLAG_REMOVED_IN}).", flag_values=fv)
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
  # A string, checked by segment_scan: a bad value ends in the one-line error.
  flags.DEFINE_string("species", None, "mouse or rat: the brain volume must fit that "
                      "species' range (mouse 300-750, rat 1200-3200 mm^3) or the report "
                      "warns. Default: either fits.", flag_values=fv)
  _key_flags_of_caller(fv, sorted(set(fv) - before))


def segment_model_dir(fv: flags.FlagValues = flags.FLAGS) -> str | None:
  """``--model_dir``, or the deprecated ``--checkpoint`` with one warning line on stderr
  (UsageError: both given, naming different folders)."""
  new, old = fv["model_dir"], fv["checkpoint"]
  if old.value is None:
    return new.value
  if new.value is not None and new.value != old.value:
    raise UsageError(f"--model_dir {new.value} and --checkpoint {old.value}: give the model "
                     "folder once, as --model_dir")
  print(CHECKPOINT_FLAG_WARNING, file=sys.stderr, flush=True)
  return old.value


def segment_command(fv: flags.FlagValues = flags.FLAGS) -> Callable[[list[str]], None]:
  """``main(argv)`` of ``rodent-gbp-segment`` reading the flags in ``fv``."""

  @run_main
  def main(argv: list[str]) -> None:
    import rodent_gbp
    from rodent_gbp import batch
    if fv["version"].value:
      print(f"rodent-gbp-segment {rodent_gbp.__version__}")
      return
    begin(argv, fv)
    log = functools.partial(print, flush=True)
    if fv["merge_summaries"].value is not None:
      given = [n for n in batch.SCAN_FLAGS if fv[n].present]
      batch.merge(fv["merge_summaries"].value, fv["out_dir"].value, log=log, given=given)
      return
    batch.enable_compile_cache(fv["compile_cache"].value)
    # Returns None (absl's app.run exits with main's return value); some scans of
    # many failed: exit code 3 (batch.EXIT_CODES).
    code = batch.run(
        fv["input"].value, segment_model_dir(fv), fv["out_dir"].value,
        shard=batch.parse_shard(fv["shard"].value), skip_existing=fv["skip_existing"].value,
        plane=fv["plane"].value, volume=fv["volume"].value, average=fv["average"].value,
        voxel_scale=fv["voxel_scale"].value, truth=fv["truth"].value,
        name=fv["name"].value, overwrite=fv["overwrite"].value, qc=fv["qc"].value,
        placement=fv["placement"].value, displacement=fv["displacement"].value,
        species=fv["species"].value, log=log)
    if code:
      raise SystemExit(code)

  return main


LABELS_HELP = (
    "outputs per scan: <name>_brainmask.nii.gz (0/1, the brain extractor's mask), "
    "<name>_labels.nii.gz\n(0 background = not brain, 1 white matter, 2 gray matter, 3 CSF; "
    "0 outside the brain mask), <name>_brain.nii.gz,\n<name>_saliency.nii.gz, <name>_qc.png, "
    "<name>_slices.csv, <name>_report.json. What the tissue classes mean and the truth\nthey"
    " were learned from: the model folder's MODEL_CARD.md and the report's \"labels\" entry.")


def segment_main(argv: list[str] | None = None) -> None:
  """The ``rodent-gbp-segment`` console script (flags on a private FlagValues)."""
  argv = list(sys.argv if argv is None else argv)
  fv = flags.FlagValues()
  define_segment_flags(fv)
  if any(a in ("-h", "--help", "-help") for a in argv[1:]):
    from rodent_gbp import batch
    codes = "\n".join(f"  {code}: {text}" for code, text in batch.EXIT_CODES.items())
    print(f"usage: rodent-gbp-segment --input SCAN_OR_FOLDER [--input ...] "
          f"[--model_dir FOLDER] --out_dir OUT\n       rodent-gbp-segment --merge_summaries "
          f"A.csv,B.csv --out_dir OUT\n\n{LABELS_HELP}\n\nexit codes:\n{codes}\n\n"
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
