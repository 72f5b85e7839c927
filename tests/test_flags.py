"""The binaries' flags: one name per kind of folder, one way to configure a run.

* Folder flags (``rodent_gbp.cli``'s module doc): ``--workdir`` a run's
  folder, ``--model_dir`` a model folder (bundle), ``--checkpoint_dir`` an
  Orbax training-checkpoint folder, ``--out_dir`` a folder of written data or
  figures; read-only input data folders keep their names (READ_ONLY_DATA).
  Every binary in ``experiments/`` is imported and the flags it defines are
  checked by :func:`folder_flag_problems`, itself checked on planted flags.
* ``rodent-gbp-segment``: ``--input``, ``--out_dir``, ``--model_dir``; the old
  ``--checkpoint`` still works with one warning line.
* Every binary that builds a ``configs.Config`` takes ``--set FIELD=VALUE``
  (and ``--config NAME`` but for the extractor's) through
  ``cli.config_from_flags``; every binary's ``main`` starts with ``cli.begin``.
"""

from __future__ import annotations

import re

from absl import flags
import pytest

from conftest import REPO, imported_binary
from rodent_gbp import cli
from rodent_gbp import configs
from rodent_gbp.errors import UsageError

BINARIES = sorted(p.stem for p in (REPO / "experiments").glob("*.py"))

CANONICAL = {"workdir", "model_dir", "checkpoint_dir", "out_dir"}
# Input data folders the binaries only read (a converted set, a source copy,
# the cache of converted sets, an existing phantom, committed baselines).
READ_ONLY_DATA = {"data_dir", "data_root", "data_cache", "epi_root", "t2_root", "epi_dir",
                  "t2_dir", "t2_paper_dir", "phantom_dir", "baseline_dir"}
# Old names still accepted, with a warning, until they are removed.
DEPRECATED = {"checkpoint": "model_dir"}
FOLDER_SUFFIXES = ("dir", "root", "cache", "folder", "path")
FOLDER_NAMES = {"out", "output", "checkpoint", "ckpt", "bundle", "model", "save", "dest"}

# Binaries that build a configs.Config: --config and --set; the extractor's
# (no named config is the extractor's): --set only.
NAMED_CONFIG_BINARIES = {"reproduce", "train", "cross_validate", "placement_study",
                         "make_phantom"}
EXTRACTOR_CONFIG_BINARIES = {"train_extractor", "extraction_cv"}
# Flags a binary needs to get as far as its config (required flags, a split);
# folders under a test's tmp_path (nothing is written there: main stops first).
REQUIRED = {"train": ["--workdir={t}/w"], "cross_validate": ["--dataset=mouse_epi",
                                                            "--workdir={t}/w"],
            "placement_study": ["--out_dir={t}/o"], "make_phantom": ["--out_dir={t}/o"],
            "reproduce": ["--workdir={t}/w"],
            "train_extractor": ["--data_dir={t}/d", "--model_dir={t}/m", "--fold=0"],
            "extraction_cv": ["--workdir={t}/w", "--data_dir={t}/d"]}


#: Flags named like a folder that are switches, not folders.
SWITCHES = {"compile_cache"}  # --compile_cache / --nocompile_cache: use the JAX cache


def folder_flag_problems(defined: dict[str, str]) -> list[str]:
  """What is wrong with the folder flags of ``defined`` ({name: help}).

  A flag named like a folder (ends in dir, root, cache, folder, path; or out,
  checkpoint, bundle, ...) must be a canonical name, a read-only data folder
  or a deprecated alias whose help says so; ``--model_dir`` must speak of a
  model, ``--checkpoint_dir`` of a checkpoint, ``--out_dir`` of neither a
  bundle nor a model folder.
  """
  problems = []
  for name, text in sorted(defined.items()):
    low = text.lower()
    folderish = (name.endswith(FOLDER_SUFFIXES) or name in FOLDER_NAMES) and name not in SWITCHES
    if name in DEPRECATED:
      if not low.startswith("deprecated") or f"--{DEPRECATED[name]}" not in low:
        problems.append(f"--{name}: not marked as the deprecated --{DEPRECATED[name]}")
    elif folderish and name not in CANONICAL | READ_ONLY_DATA:
      problems.append(f"--{name}: not a canonical folder name")
    elif name == "model_dir" and "model" not in low:
      problems.append("--model_dir: not a model folder")
    elif name == "checkpoint_dir" and "checkpoint" not in low:
      problems.append("--checkpoint_dir: not a checkpoint folder")
    elif name == "out_dir" and ("bundle" in low or "model folder" in low):
      problems.append("--out_dir: names a model folder")
  return problems


def _defined(script: str) -> dict[str, str]:
  """{name: help} of the flags ``experiments/<script>.py`` defines."""
  before = set(flags.FLAGS)
  with imported_binary(script):
    return {n: flags.FLAGS[n].help or "" for n in set(flags.FLAGS) - before}


def test_folder_rule_names_planted_flags():
  planted = {"out": "Output folder.", "bundle": "Existing bundle.", "save_dir": "Saves.",
             "checkpoint": "A model folder.", "out_dir": "The bundle folder to write.",
             "model_dir": "A model folder (bundle).", "checkpoint_dir": "Orbax checkpoint.",
             "data_dir": "Dataset.", "workdir": "The run's folder.", "seed": "Seed.",
             "folds": "Fold file.", "weights_path": "Where.", "model": "The model."}
  assert folder_flag_problems(planted) == [
      "--bundle: not a canonical folder name",
      "--checkpoint: not marked as the deprecated --model_dir",
      "--model: not a canonical folder name",
      "--out: not a canonical folder name",
      "--out_dir: names a model folder",
      "--save_dir: not a canonical folder name",
      "--weights_path: not a canonical folder name"]
  assert folder_flag_problems({"checkpoint": "Deprecated: the old name of --model_dir."}) == []
  assert folder_flag_problems({"model_dir": "Output folder."}) == [
      "--model_dir: not a model folder"]


def test_every_binary_is_checked():
  assert len(BINARIES) >= 18 and {"reproduce", "segment", "ship_model"} <= set(BINARIES)


@pytest.mark.parametrize("script", BINARIES)
def test_binary_folder_flags_are_canonical(script):
  defined = _defined(script)
  assert folder_flag_problems(defined) == []
  if script != "segment":  # the console script's deprecated alias lives there only
    assert not set(defined) & set(DEPRECATED)


def test_model_folder_flags_by_binary():
  """Known answers: which binary takes which folder."""
  want = {"lognormal": "model_dir", "paper_readings": "model_dir", "refine_study": "model_dir",
          "saliency": "model_dir", "sanity_check": "model_dir",
          "select_improved": "model_dir", "segment": "model_dir",
          "train_extractor": "model_dir", "ship_model": "model_dir",
          "placement_study": "model_dir", "reproduce": "checkpoint_dir",
          "make_phantom": "out_dir", "prepare_data": "out_dir", "data_statistics": "out_dir"}
  for script, name in want.items():
    assert name in _defined(script), script


# --- rodent-gbp-segment ---------------------------------------------------------------


def test_console_script_help_names_the_folders(capsys):
  with pytest.raises(SystemExit) as e:
    cli.segment_main(["rodent-gbp-segment", "--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith("usage: rodent-gbp-segment --input SCAN_OR_FOLDER [--input ...] "
                        "[--model_dir FOLDER] --out_dir OUT")
  for name in ("--input", "--out_dir", "--model_dir"):
    assert f"  {name}:" in out, name
  assert "  --checkpoint: Deprecated" in out
  fv = flags.FlagValues()
  cli.define_segment_flags(fv)
  assert folder_flag_problems({n: fv[n].help for n in fv}) == []


@pytest.fixture
def segment_calls(monkeypatch):
  """Runs rodent-gbp-segment with inference.segment_scan replaced by a recorder."""
  from rodent_gbp import inference
  calls = []
  monkeypatch.setattr(inference, "segment_scan", lambda *a, **k: calls.append((a, k)))

  def run(*argv):
    calls.clear()
    cli.segment_main(["rodent-gbp-segment", "--input=scan.nii.gz", "--out_dir=out", *argv])
    # The batch layer passes paths; the flags' values are what is compared.
    return tuple(None if x is None else str(x) for x in calls[0][0]) if calls else None

  return run


def test_checkpoint_still_works_and_warns(segment_calls, capsys):
  assert segment_calls("--checkpoint=/models/m1") == ("scan.nii.gz", "/models/m1", "out")
  assert capsys.readouterr().err.splitlines() == [
      "warning: --checkpoint is deprecated, use --model_dir; it will be removed in 0.3.0"]
  assert segment_calls("--model_dir=/models/m2") == ("scan.nii.gz", "/models/m2", "out")
  assert capsys.readouterr().err == ""
  assert segment_calls() == ("scan.nii.gz", None, "out")  # the installed model
  with pytest.raises(SystemExit) as e:
    segment_calls("--model_dir=/a", "--checkpoint=/b")
  assert e.value.code == 2
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and err[0].startswith("error: --model_dir /a and --checkpoint /b")


# --- --config and --set ---------------------------------------------------------------


class _Stop(Exception):
  pass


_CONFIG_FROM_FLAGS = cli.config_from_flags


def _config_of(monkeypatch, tmp_path, script: str, argv: list[str]):
  """The Config ``script``'s main builds from ``argv`` (main stops right there)."""
  got = []

  def record(*a, **k):
    got.append(_CONFIG_FROM_FLAGS(*a, **k))
    raise _Stop

  monkeypatch.setattr(cli, "config_from_flags", record)
  with imported_binary(script) as module:
    required = [f.format(t=tmp_path) for f in REQUIRED[script]]
    rest = flags.FLAGS([script, *required, *argv])
    with pytest.raises(_Stop):
      module.main(rest)
  assert list(tmp_path.iterdir()) == []
  return got[0]


@pytest.mark.parametrize("script", sorted(NAMED_CONFIG_BINARIES))
def test_named_config_binaries_take_config_and_set(script, monkeypatch, tmp_path):
  config = _config_of(monkeypatch, tmp_path, script, [
      "--config=smoke", "--set", "epochs=3", "--set=clip_grad_norm=0.25",
      "--set", "gradient_classes=2,3"])
  assert config == configs.override(configs.get_config("smoke"), epochs=3,
                                    clip_grad_norm=0.25, gradient_classes=(2, 3))


@pytest.mark.parametrize("script", sorted(EXTRACTOR_CONFIG_BINARIES))
def test_extractor_binaries_take_set(script, monkeypatch, tmp_path):
  config = _config_of(monkeypatch, tmp_path, script, [
      "--features=4", "--set", "epochs=3", "--set", "clip_grad_norm=0"])
  assert (config.features, config.epochs, config.clip_grad_norm, config.num_classes) == (
      4, 3, 0.0, 2)
  assert "config" not in _defined(script)


def test_field_flags_are_set_shorthands(monkeypatch, tmp_path):
  """--epochs 3 is --set epochs=3; make_phantom's --size is image_size."""
  config = _config_of(monkeypatch, tmp_path, "train", [
      "--epochs=3", "--learning_rate=0.125", "--set", "nesterov=false"])
  assert config == configs.override(configs.get_config("default"), epochs=3,
                                    learning_rate=0.125, nesterov=False)
  config = _config_of(monkeypatch, tmp_path, "make_phantom", [
      "--size=64", "--seed=4", "--set", "phantom=measured"])
  assert (config.image_size, config.phantom_seed, config.animals, config.phantom) == (
      64, 4, 10, "measured")
  same = _config_of(monkeypatch, tmp_path, "train", ["--epochs=3", "--set", "epochs=3"])
  assert same.epochs == 3


@pytest.mark.parametrize("argv, fragment", [
    (["--set", "nope=1"], "error: --set nope=1: 'nope' is no config field; the fields: name, "),
    (["--set", "epochs=three"], "error: --set epochs=three: config field epochs takes an "
                                "integer, not 'three'"),
    (["--set", "augment=maybe"], "error: --set augment=maybe: config field augment takes "
                                 "true or false"),
    (["--set", "phantom=cartoon"], "error: --set phantom=cartoon: config field phantom is "
                                   "one of standard, "),
    (["--set", "epochs"], "error: --set epochs: expected FIELD=VALUE"),
    (["--epochs=2", "--set", "epochs=3"], "error: --set epochs=3 conflicts with --epochs 2: "
                                          "config field epochs given twice"),
])
def test_bad_set_is_one_usage_line(argv, fragment, tmp_path, capsys):
  with imported_binary("train") as module:
    rest = flags.FLAGS(["train", f"--workdir={tmp_path / 'w'}", *argv])
    with pytest.raises(SystemExit) as e:
      module.main(rest)
  assert e.value.code == 2
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and err[0].startswith(fragment), err
  assert not (tmp_path / "w").exists()


def test_parse_field_by_type():
  assert cli.parse_field("learning_rate", "1e-3") == 0.001
  assert cli.parse_field("nesterov", "TRUE") is True
  assert cli.parse_field("augment", "0") is False
  assert cli.parse_field("gradient_classes", "1,3") == (1, 3)
  assert cli.parse_field("template", "mask") == "mask"
  with pytest.raises(UsageError, match="gradient_classes takes comma-separated integers"):
    cli.parse_field("gradient_classes", "1,x")


def test_set_against_a_checkpoint(tmp_path):
  """With --checkpoint_dir a field set must equal the checkpoint's, but seed and
  displacement (what job.run takes from the given config)."""
  from rodent_gbp import fileio
  from rodent_gbp.training import checkpoint
  stored = configs.override(configs.get_config("smoke"), epochs=2, seed=7)
  fileio.write_json(tmp_path / checkpoint.CONFIG_FILE, stored.to_dict())

  def run_config(*argv):
    with imported_binary("reproduce") as module:
      flags.FLAGS(["reproduce", f"--checkpoint_dir={tmp_path}", *argv])
      return module.run_config()

  assert run_config() == stored
  assert run_config("--set", "epochs=2") == stored
  assert run_config("--seed=9", "--set", "displacement=volume") == configs.override(
      stored, seed=9, displacement="volume")
  with pytest.raises(UsageError, match=r"^--set epochs=3 conflicts with the config of "
                                       rf"--checkpoint_dir {re.escape(str(tmp_path))} "
                                       r"\(epochs 2\); leave it out$"):
    run_config("--set", "epochs=3")


# --- cli.begin ----------------------------------------------------------------------


@pytest.mark.parametrize("script", BINARIES)
def test_every_main_starts_with_begin(script, monkeypatch):
  seen = []

  def begin(argv, fv=flags.FLAGS):
    seen.append(list(argv))
    raise _Stop

  monkeypatch.setattr(cli, "begin", begin)
  with imported_binary(script) as module:
    with pytest.raises(_Stop):
      module.main([script, "stray"])  # flags unparsed: begin comes before any flag
  assert seen == [[script, "stray"]]


def test_config_binaries_are_listed():
  """A binary that touches configs or the extractor's settings is one of the lists."""
  uses = re.compile(r"\bconfigs\.|config_from_flags|extractor_settings|define_extractor_flags")
  found = {s for s in BINARIES
           if uses.search((REPO / "experiments" / f"{s}.py").read_text())}
  assert found <= NAMED_CONFIG_BINARIES | EXTRACTOR_CONFIG_BINARIES
  assert found >= {"train", "cross_validate", "placement_study", "make_phantom",
                   "train_extractor", "extraction_cv", "reproduce"}
  assert uses.search("config = configs.get_config('smoke')")
  assert not uses.search("print(config)")
  for script in NAMED_CONFIG_BINARIES:
    assert {"config", "set"} <= set(_defined(script)), script
  for script in set(BINARIES) - NAMED_CONFIG_BINARIES - EXTRACTOR_CONFIG_BINARIES:
    assert "set" not in _defined(script), script


def test_version():
  import rodent_gbp
  changelog = (REPO / "CHANGELOG.md").read_text()
  assert rodent_gbp.__version__ == "0.2.0"
  assert f"## {rodent_gbp.__version__}" in changelog
