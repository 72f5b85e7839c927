"""The cascading-randomisation sanity check (``rodent_gbp.studies.sanity``)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from rodent_gbp import configs
from rodent_gbp import fileio
from rodent_gbp import model as model_lib
from rodent_gbp.errors import UsageError
from rodent_gbp.studies import sanity
from rodent_gbp.studies.common import gradients
from rodent_gbp.studies.common import randomise
from rodent_gbp.studies.common.randomise import layers_from_top


def _tiny():
  config = configs.override(configs.get_config("smoke"), features=2, depth=1)
  model = model_lib.build_unet(config)
  params = model_lib.init_params(model, jax.random.key(1), (16, 16))
  return model, params


def _leaves_equal(a, b) -> bool:
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def test_randomising_changes_exactly_the_layers_named_so_far():
  model, params = _tiny()
  order = layers_from_top(params)
  assert order[0] == "head" and order[-1].startswith("down0")
  fresh = randomise.fresh_params(model, (16, 16), seed=0)
  # Fixed seed: the same fresh params every time.
  assert _leaves_equal(fresh, randomise.fresh_params(model, (16, 16), seed=0))
  for k in range(len(order) + 1):
    p = randomise.cascade_params(params, fresh, order, k)
    assert set(p) == set(params)
    for name in order[:k]:
      assert _leaves_equal(p[name], fresh[name]), (k, name)
      assert not _leaves_equal(p[name], params[name]), (k, name)
    for name in order[k:]:
      assert p[name] is params[name] or _leaves_equal(p[name], params[name])
      assert _leaves_equal(p[name], params[name]), (k, name)
  # The trained params are not modified in place.
  assert not _leaves_equal(params["head"], fresh["head"])


def test_correlation_is_one_at_step_zero_and_falls_after():
  model, params = _tiny()
  order = layers_from_top(params)
  fresh = randomise.fresh_params(model, (16, 16), seed=0)
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 1, (3, 16, 16)).astype(np.float32)
  brain = np.array([True, True, False])
  rows, shown = sanity.cascade_maps(model, params, images, brain, fresh=fresh, order=order,
                                    depths=[0, 1, len(order)], batch_size=4,
                                    figure_slice=0, log=lambda s: None)
  assert [r["layers_randomised"] for r in rows] == [0, 1, len(order)]
  assert rows[0]["top_layer"] is None and rows[1]["top_layer"] == "head"
  for m in sanity.METHODS:
    for s in sanity.SCORES:
      first = rows[0][f"{m}/{s}"]
      assert first["spearman_mean"] == pytest.approx(1.0, abs=1e-12)
      assert first["slices"] == 2  # the slice without brain is left out
      assert rows[-1][f"{m}/{s}"]["spearman_mean"] < 0.999
      assert len(shown[(m, s)]) == 3
  # The map at step 0 is the trained network's gradient image.
  g = gradients.gradient_images(model, params, images, method="guided", score="logit")
  np.testing.assert_array_equal(shown[("guided", "logit")][0], g[0])


def test_spearman_is_scipys():
  from scipy import stats
  rng = np.random.default_rng(2)
  a, b = rng.normal(size=(2, 5, 6)), rng.normal(size=(2, 5, 6))
  b[1] = a[1] ** 3  # monotone: rho 1
  got = sanity.correlations(a, b, np.array([True, True]))
  want = [stats.spearmanr(a[i].ravel(), b[i].ravel()).statistic for i in range(2)]
  assert got["spearman_mean"] == pytest.approx(np.mean(want))
  assert want[1] == pytest.approx(1.0)


def test_bad_choices():
  with pytest.raises(UsageError, match="methods"):
    sanity.check_choices(["gbp"], ["logit"])
  with pytest.raises(UsageError, match="scores"):
    sanity.check_choices(["guided"], ["odds"])
  assert sanity.depths_of(5, 0) == [0, 1, 2, 3, 4, 5]
  assert sanity.depths_of(12, 3) == [0, 6, 12]


def test_binary_end_to_end(binary, model_dir, phantom_dir, tmp_path):
  out = tmp_path / "sanity"
  binary("sanity_check", [f"--model_dir={model_dir}", f"--data_dir={phantom_dir}",
                          "--steps=2", "--methods=guided", f"--out_dir={out}"])
  report = fileio.read_json(out / "sanity.json")
  assert (out / "sanity.md").read_text().startswith("# Saliency sanity check")
  assert (out / "sanity_maps.png").stat().st_size > 1000
  assert [r["layers_randomised"] for r in report["rows"]][0] == 0
  assert report["rows"][-1]["layers_randomised"] == len(report["order"])
  assert report["rows"][0]["guided/probability"]["spearman_mean"] == pytest.approx(1.0)
  assert set(report["rows"][0]) >= {"guided/probability", "guided/logit"}
  assert not any(k.startswith(("vanilla/", "deconvnet/")) for k in report["rows"][0])
  for s in sanity.SCORES:
    for when in ("trained", "randomised"):
      for name in sanity.PLACERS:
        assert 0.0 <= report["placers"][when][s][name]["brain_dsc"] <= 1.0
      vd = report["placers"][when][s]["gbp_improved"]["located_displacement"]
      assert set(vd) == set(report["animals"]) and all(len(d) == 2 for d in vd.values())
  zd = report["zero_displacement"]
  assert set(zd["per_animal"]) == set(report["animals"]) and 0.0 <= zd["brain_dsc"] <= 1.0
  assert "displacement (0, 0)" in (out / "sanity.md").read_text()
  assert (out / "sanity_maps.png").stat().st_size < 300_000
  with pytest.raises(SystemExit):
    binary("sanity_check", [f"--model_dir={model_dir}", f"--data_dir={phantom_dir}",
                            "--scores=odds", f"--out_dir={out}"])
