r"""A figure of synthesised training images beside the real ones of each set.

Rows: a ``mouse_t2_atlas`` mouse (real T2, skull-stripped), the DSURQE average
(real ex-vivo T2), a ``mouse_epi`` head (real EPI) and the same head with an
atlas brain placed into it (label map only). Columns: the real image (where
one exists), the tissue target (0 background, 1 WM, 2 GM, 3 CSF, 4 brain of
unknown or ignored tissue), then synthesised images of four keys
(``synthesis.synthesize`` with the tissue network's training options,
``tissue_synth.OPTIONS``, ``p_real`` 0: no real image swapped in).

  python experiments/synthesis_figure.py --out_dir experiments/results/tissue_synth
"""

from __future__ import annotations

import dataclasses
import pathlib

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from rodent_gbp import cli
from rodent_gbp import synthesis
from rodent_gbp.datasets import cache
from rodent_gbp.datasets import label_maps
from rodent_gbp.datasets import mouse_dsurqe
from rodent_gbp.datasets import mouse_t2_atlas
from rodent_gbp.training import tissue_synth

FLAGS = flags.FLAGS
REPO = pathlib.Path(__file__).resolve().parents[1]
flags.DEFINE_string("data_root", str(REPO.parent / "shared" / "data"),
                    "Folder with mouse-epi/, mouse-t2-atlas/ and mouse-dsurqe/.")
flags.DEFINE_string("data_cache", None,
                    "Where converted sets are kept (default: the project's cache).")
flags.DEFINE_string("out_dir", str(REPO / "experiments" / "results" / "tissue_synth"),
                    "Where synthesis.png goes.")
flags.DEFINE_integer("seed", 0, "First key.")

PIXEL_MM, SHAPE, KEYS = 0.25, (80, 80), 4


def _middle(s: label_maps.SliceSet, frac: float = 0.5) -> label_maps.SliceSet:
  i = int(frac * (len(s) - 1))
  return label_maps.SliceSet(**{k: getattr(s, k)[i:i + 1] for k in (
      "labels", "target", "image", "has_image", "zoom", "subject")})


def main(argv):
  cli.begin(argv)
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  root = pathlib.Path(FLAGS.data_root)
  mouse = "tg4510_tp3_1_20130520_WT"
  base = root / "mouse-t2-atlas"
  t2 = label_maps.t2_brain(*mouse_t2_atlas.read_mouse(
      base / mouse_t2_atlas.IMAGE_DIR / f"{mouse}.nii.gz",
      base / mouse_t2_atlas.LABEL_DIR / f"{mouse}.nii.gz"), mouse)
  ds = label_maps.dsurqe_brain(*mouse_dsurqe.read_dsurqe(root / "mouse-dsurqe")[:3])
  epi_dir = cache.prepare("mouse_epi", data_root=root / "mouse-epi",
                          cache_dir=FLAGS.data_cache,
                          resolution="native", log=None)
  head = label_maps.read_head(epi_dir / "01", "mouse_epi:01")
  rows = [("mouse_t2_atlas (T2)", _middle(label_maps.brain_slices(t2, pixel_mm=PIXEL_MM,
                                                                  shape=SHAPE), 0.55)),
          ("DSURQE (ex-vivo T2)", _middle(label_maps.brain_slices(ds, pixel_mm=PIXEL_MM,
                                                                  shape=SHAPE), 0.45)),
          ("mouse_epi head (EPI)", _middle(label_maps.real_head_slices(
              head, pixel_mm=PIXEL_MM, shape=SHAPE), 0.5)),
          ("head + atlas brain", _middle(label_maps.composite_heads(
              [head], [t2], copies=1, pixel_mm=PIXEL_MM, shape=SHAPE, seed=0), 0.5))]
  groups = jnp.asarray(label_maps.group_of_label())
  options = dataclasses.replace(tissue_synth.OPTIONS, p_real=0.0)
  fn = jax.jit(lambda key, b: synthesis.synthesize(
      key, b["labels"], b["target"], b["zoom"], groups, options))
  fig, axes = plt.subplots(len(rows), 2 + KEYS, figsize=(2.0 * (2 + KEYS), 2.1 * len(rows)))
  for r, (name, s) in enumerate(rows):
    batch = {k: jnp.asarray(np.repeat(v, KEYS, axis=0)) for k, v in s.arrays().items()}
    out = jax.vmap(lambda key, b: jax.tree.map(lambda x: x[0], fn(key, jax.tree.map(
        lambda x: x[None], b))))(jax.random.split(jax.random.PRNGKey(FLAGS.seed), KEYS), batch)
    panels = [(s.image[0] if s.has_image[0] else np.zeros(SHAPE), "real" if s.has_image[0]
               else "(label map only)"), (s.target[0], "target")]
    panels += [(np.asarray(out["image"][i]), f"synthesised, key {i}") for i in range(KEYS)]
    for c, (img, title) in enumerate(panels):
      ax = axes[r, c]
      ax.imshow(np.asarray(img).T, cmap="magma" if title == "target" else "gray",
                origin="lower", vmin=0, vmax=4 if title == "target" else None)
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_title(title, fontsize=8)
    axes[r, 0].set_ylabel(name, fontsize=8)
  fig.suptitle("Training images synthesised from label maps (rodent_gbp.synthesis), "
               "beside the real images", fontsize=9)
  fig.tight_layout()
  out_path = pathlib.Path(FLAGS.out_dir) / "synthesis.png"
  out_path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out_path, dpi=80)
  print(out_path)


if __name__ == "__main__":
  app.run(main)
