"""Input statistics of the synthetic phantom against the real public sets.

  python experiments/data_statistics.py --out_dir experiments/results/statistics \\
      [--epi_root ../shared/data/mouse-epi] [--t2_root ../shared/data/mouse-t2-atlas] \\
      [--data_cache DIR]

Measures, per animal, then median and range over animals
(``rodent_gbp.studies.realism``):

* the phantom (``phantom.write_phantom``: 10 animals, seed 0, size 96, the
  main job's; written into a temporary folder unless ``--phantom_dir`` names
  one) against ``mouse_epi`` (session 1 of every animal, raw intensities, the
  manual brain masks): surroundings, background noise, noise in the brain,
  bias field (N4), brain size. ``mouse_epi``'s tissue labels are
  pseudo-labels and are not used;
* the phantom against ``mouse_t2_atlas`` at its native 0.15 mm grid (and at
  the paper grid, 0.3 mm block means): partial volume across the brain edge
  and the GM/WM border, noise inside GM, bias field, brain size and its
  variation over animals.

The real sets are converted once by ``rodent_gbp.datasets.prepare`` (cached
under ``--data_cache``). Writes ``<out_dir>/statistics.json`` (every animal's
numbers, the summaries, the table) and ``<out_dir>/statistics.md`` (the table:
statistic | phantom median [range] | real median [range] | set).
"""

import pathlib
import platform
import shlex
import tempfile
import time

from absl import app
from absl import flags
import nibabel as nib
import numpy as np

from rodent_gbp import cli
from rodent_gbp import datasets
from rodent_gbp import fileio
from rodent_gbp import phantom
from rodent_gbp.errors import DataError, UsageError
from rodent_gbp.studies import realism
from rodent_gbp import report

_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder (statistics.json, "
                               "statistics.md).", required=True)
_EPI_ROOT = flags.DEFINE_string("epi_root", "../shared/data/mouse-epi",
                                "Local copy of mouse_epi in its source's layout.")
_T2_ROOT = flags.DEFINE_string("t2_root", "../shared/data/mouse-t2-atlas",
                               "Local copy of mouse_t2_atlas in its source's layout.")
_DATA_CACHE = flags.DEFINE_string("data_cache", None, "Cache of converted sets; default "
                                  "$RODENT_GBP_DATA_CACHE or ~/.cache/rodent_gbp/datasets.")
_EPI_DIR = flags.DEFINE_string("epi_dir", None, "A converted mouse_epi folder to use as it "
                               "is (skips --epi_root).")
_T2_DIR = flags.DEFINE_string("t2_dir", None, "A converted mouse_t2_atlas folder at the "
                              "native grid to use as it is (skips --t2_root).")
_T2_PAPER_DIR = flags.DEFINE_string("t2_paper_dir", None, "The same at the paper grid.")
_T2_PAPER = flags.DEFINE_bool("t2_paper_grid", True, "Also measure partial volume on "
                              "mouse_t2_atlas at the paper grid (0.3 mm block means).")
_PHANTOM_DIR = flags.DEFINE_string("phantom_dir", None, "An existing phantom folder; "
                                   "default: write one into a temporary folder.")
_PHANTOM_ANIMALS = flags.DEFINE_integer("phantom_animals", 10, "Phantom animals.")
_PHANTOM_SEED = flags.DEFINE_integer("phantom_seed", 0, "Phantom seed.")
_PHANTOM_SIZE = flags.DEFINE_integer("phantom_size", 96, "Phantom in-plane matrix.")
_PHANTOM_KIND = flags.DEFINE_enum("phantom_kind", "standard", list(phantom.KINDS),
                                  "Phantom kind (standard: the main job's).")
_MAX_ANIMALS = flags.DEFINE_integer("max_animals", 0, "Measure only the first N animals "
                                    "of each set (0: all; for quick runs).")

JSON_FILE, MD_FILE = "statistics.json", "statistics.md"


def _read(folder: pathlib.Path, stem: str):
  """A volume in RAS+ (float64) and its voxel size in mm (RAS axes)."""
  path = folder / f"{stem}.nii.gz"
  if not path.is_file():
    raise DataError(f"{path}: file not found")
  img = nib.as_closest_canonical(nib.load(str(path)))
  vs = tuple(round(float(v), 6) for v in np.sqrt(np.sum(img.affine[:3, :3] ** 2, axis=0)))
  return np.asarray(img.dataobj, np.float64), vs


def _animals(root: pathlib.Path, limit: int) -> list[pathlib.Path]:
  """Top-level animal folders (for mouse_epi: session 1), sorted by id."""
  folders = sorted(p for p in root.iterdir() if p.is_dir() and (p / "image.nii.gz").is_file())
  if not folders:
    raise DataError(f"{root}: no animal folders with an image.nii.gz")
  return folders[:limit] if limit > 0 else folders


def _measure_animal(kind: str, folder: pathlib.Path) -> tuple[dict, dict]:
  """(statistics, facts) of one animal; ``kind`` picks what applies to its set."""
  image, vs = _read(folder, "image")
  labels = _read(folder, "labels")[0].astype(np.int64)
  mask = _read(folder, "brainmask")[0] > 0
  if kind == "t2_paper":
    return realism.tissue_statistics(image, labels, vs), {"voxel_size": vs}
  meta = fileio.read_json(folder / "meta.json") if (folder / "meta.json").is_file() else {}
  stats = {**realism.size_statistics(mask, vs), **realism.bias_statistics(image, mask, vs)}
  facts = {"voxel_size": vs, "shape": list(image.shape)}
  if kind in ("phantom", "epi"):
    stats.update(realism.surroundings_statistics(image, mask, vs))
  if kind in ("phantom", "t2"):
    stats.update(realism.tissue_statistics(image, labels, vs))
  if kind == "t2":
    facts["genotype"] = meta.get("genotype")
  if kind == "phantom":
    # Checks against the generator's truth (its labels are exact, its intensities known).
    values = {1: meta["intensities"]["wm"], 2: meta["intensities"]["gm"],
              3: meta["intensities"]["csf"]}
    log_field, known = realism.class_bias_field(image, labels, values, vs)
    bm = realism.brain_median(image, mask)
    stats["bias_truth_p95_p5"] = realism.field_ratio(log_field, mask & known)
    stats["noise_sigma_truth"] = float(meta["noise_sigma"]) / bm
    facts["size_factor"] = meta.get("size_factor")
  return stats, facts


def _measure_set(name: str, kind: str, root: pathlib.Path, limit: int, log) -> dict:
  start = time.perf_counter()
  per_animal, facts = {}, {}
  for folder in _animals(root, limit):
    per_animal[folder.name], facts[folder.name] = _measure_animal(kind, folder)
  seconds = time.perf_counter() - start
  log(f"{name}: {len(per_animal)} animals in {seconds:.0f} s")
  info = {"folder": root.name, "animals": sorted(per_animal), "seconds": round(seconds, 1),
          "voxel_size": sorted({tuple(f["voxel_size"]) for f in facts.values()})}
  dataset_file = root / "dataset.json"
  if dataset_file.is_file():
    d = fileio.read_json(dataset_file)
    info["source"] = {k: d.get(k) for k in ("dataset", "repository", "commit", "subdir",
                                            "licence", "manifest_sha256", "resolution",
                                            "converter_version")}
  if kind == "t2":
    info["genotype"] = {a: f.get("genotype") for a, f in facts.items()}
  if kind == "phantom":
    info["source"] = fileio.read_json(root / phantom.COMPLETE_FILE) if (
        root / phantom.COMPLETE_FILE).is_file() else None
    info["size_factor"] = {a: f.get("size_factor") for a, f in facts.items()}
  return {"info": info, "per_animal": per_animal}


def _set_level(result: dict) -> dict:
  groups = {}
  for animal, genotype in result["info"].get("genotype", {}).items():
    if genotype:
      groups.setdefault(genotype, []).append(animal)
  return realism.set_level_statistics(result["per_animal"], groups=groups)


def _checks(summary: dict) -> list[str]:
  s = summary.get("phantom", {})
  def med(k):
    return s.get(k, {}).get("median")
  lines = []
  if med("bias_truth_p95_p5") is not None:
    lines.append(f"- Phantom bias field p95 / p5 inside the brain: N4 reads "
                 f"{realism.format_number(med('bias_p95_p5'))}, the generator's field (image over "
                 f"class intensity, smoothed) {realism.format_number(med('bias_truth_p95_p5'))} "
                 "(medians over animals).")
  if med("noise_sigma_truth") is not None:
    lines.append(f"- Phantom noise: the generator's sigma / brain median is "
                 f"{realism.format_number(med('noise_sigma_truth'))}; the corner patches' Rayleigh "
                 f"sigma reads {realism.format_number(med('corner_rayleigh_sigma'))}, the GM residual "
                 f"{realism.format_number(med('noise_gm'))}, the whole-brain residual "
                 f"{realism.format_number(med('noise_brain'))} (tissue edges inside the mask inflate "
                 "the last).")
  return lines


_NOTES = """\
Definitions (`rodent_gbp/studies/realism.py`). Raw intensities (the NIfTI as
converted, RAS+); coronal slices; distances are in-plane, in each set's own
voxels. Shells: voxels outside the brain mask whose in-plane distance to it is
in (0, 2] and (2, 8] voxels, mean over the brain mean. Background: the two
darkest (by median) of the four in-plane corner patches (10 % of each side,
every slice); level = median, sd = 1.4826 x MAD. Noise in the brain: 1.4826 x
MAD of a 3 x 3 second-difference filter (Immerkaer 1996; gain 6 on white
noise) over voxels whose 3 x 3 neighbourhood is inside the region; it reads
spatially correlated noise (an averaged or interpolated image) low. Bias:
SimpleITK N4 inside the brain mask (one thread, 8 control points, two levels
of 50 iterations, shrink 2 on axes >= 32 voxels), p95 / p5 of the field
inside the mask. Edge widths: mean intensity against the signed in-plane
distance to the border (half-voxel bins), levels from 1-3 voxels outside and
3-6 inside (brain edge, on the skull-stripped image: 0 outside) or 1.5-3
voxels on either side (GM/WM, voxels within 2 voxels of CSF or background
left out), 10-90 % crossing interpolated: a sharp step reads about 0.5-0.8
voxels, a Gaussian blur of sd g voxels 2.56 g. CV: sample sd / mean over the
animals of a set.

Caveats. mouse_epi's voxel size (0.25 mm in-plane) is uncertain, so its
volumes in mm^3 are too; its CVs and every ratio are not affected. Its images
are temporal means of EPI series (noise averaged, background floor kept).
mouse_t2_atlas is skull-stripped (no surroundings or background to measure);
its tissue classes come from registered atlas structures, so a border's width
includes any misplacement of the labels, and where the labelled WM is not
darker than GM by 5 % (levels too close) no width is given (n= in the cell).
At the paper grid its WM tracts are 1-2 voxels thick: in most mice no WM
voxel lies 1.5 voxels from GM away from CSF and background, so only the brain
edge is measured there (the GM/WM numbers are in the JSON, NaN where
undefined). Cells over fewer animals than the set has say n=. The phantom
models a rat (brain about 15 x 10 mm), the real sets are mice; the genotypes
of mouse_t2_atlas differ in brain size, hence the within-genotype CVs.
"""


def _markdown(report_: dict) -> str:
  lines = ["# Input statistics: phantom against the real sets", "",
           f"Command: `{report_['command']}`", ""]
  for name, s in report_["sets"].items():
    ids = s["animals"]
    vs = " / ".join(" x ".join(f"{v:g}" for v in t) for t in s["voxel_size"])
    lines.append(f"- {name}: {len(ids)} animals ({', '.join(ids)}); voxels {vs} mm"
                 + (f"; folder `{s['folder']}`" if name != "phantom" else ""))
  lines += ["", "Medians and [min, max] over animals; CV rows are one value over the set.",
            "", realism.markdown_table(report_["table"]), "Checks on the phantom, where "
            "the truth is known:", "", *report_["checks"], "", _NOTES]
  return "\n".join(lines)


def _command() -> str:
  """The command line that reproduces this run (the flags given)."""
  given = [f for f in (_OUT_DIR, _EPI_ROOT, _T2_ROOT, _DATA_CACHE, _EPI_DIR, _T2_DIR,
                       _T2_PAPER_DIR, _T2_PAPER, _PHANTOM_DIR, _PHANTOM_ANIMALS,
                       _PHANTOM_SEED, _PHANTOM_SIZE, _PHANTOM_KIND, _MAX_ANIMALS)
           if flags.FLAGS[f.name].present]
  args = []
  for f in given:
    v = f.value
    args.append(f"--{f.name}" if v is True else f"--no{f.name}" if v is False
                else f"--{f.name}={shlex.quote(str(v))}")
  return " ".join(["python experiments/data_statistics.py", *args])


@cli.run_main
def main(argv):
  cli.begin(argv)
  if _MAX_ANIMALS.value < 0:
    raise UsageError(f"--max_animals {_MAX_ANIMALS.value}: must be >= 0")
  log = lambda msg: print(msg, flush=True)  # noqa: E731
  out = pathlib.Path(_OUT_DIR.value)
  limit = _MAX_ANIMALS.value

  def prepared(name, given, root, resolution):
    if given:
      return pathlib.Path(given)
    return datasets.prepare(name, data_root=root, cache_dir=_DATA_CACHE.value,
                            resolution=resolution, log=log)

  folders = {"mouse_epi": ("epi", prepared("mouse_epi", _EPI_DIR.value, _EPI_ROOT.value,
                                           "native")),
             "mouse_t2_atlas": ("t2", prepared("mouse_t2_atlas", _T2_DIR.value,
                                               _T2_ROOT.value, "native"))}
  if _T2_PAPER.value:
    folders["mouse_t2_atlas_paper"] = ("t2_paper", prepared(
        "mouse_t2_atlas", _T2_PAPER_DIR.value, _T2_ROOT.value, "paper"))
  results = {}
  with tempfile.TemporaryDirectory(prefix="phantom_") as tmp:
    if _PHANTOM_DIR.value:
      phantom_root = pathlib.Path(_PHANTOM_DIR.value)
    else:
      phantom_root = pathlib.Path(tmp) / "phantom"
      log(f"phantom: writing {_PHANTOM_ANIMALS.value} animals (seed {_PHANTOM_SEED.value}, "
          f"size {_PHANTOM_SIZE.value}, {_PHANTOM_KIND.value})")
      phantom.write_phantom(phantom_root, animals=_PHANTOM_ANIMALS.value,
                            seed=_PHANTOM_SEED.value, size=_PHANTOM_SIZE.value,
                            kind=_PHANTOM_KIND.value)
    results["phantom"] = _measure_set("phantom", "phantom", phantom_root, limit, log)
  for name, (kind, root) in folders.items():
    results[name] = _measure_set(name, kind, root, limit, log)
  kinds = {"phantom": "phantom", **{n: k for n, (k, _) in folders.items()}}
  summary = {n: realism.summarise_set(r["per_animal"]) for n, r in results.items()}
  set_level = {n: _set_level(r) for n, r in results.items()
               if kinds[n] != "t2_paper"}
  import scipy
  import SimpleITK as sitk
  report_ = {
      "command": _command(),
      "provenance": {"git_commit": report.git_commit(), "python": platform.python_version(),
                     "numpy": np.__version__, "scipy": scipy.__version__,
                     "simpleitk": sitk.Version.VersionString()},
      "sets": {n: r["info"] for n, r in results.items()},
      "table": realism.table_rows(summary, set_level),
      "checks": _checks(summary),
      "summary": summary, "set_level": set_level,
      "per_animal": {n: r["per_animal"] for n, r in results.items()},
  }
  out.mkdir(parents=True, exist_ok=True)
  fileio.write_json(out / JSON_FILE, report_)
  fileio.atomic_write_text(out / MD_FILE, _markdown(report_))
  log(f"wrote {out / JSON_FILE} and {out / MD_FILE}")


if __name__ == "__main__":
  app.run(main)
