"""Tests for rodent_gbp.studies.lognormal (with the fits of rodent_gbp.distributions
and the figures of studies.common.lognormal_figures): known laws are recognised,
formulas hold."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from rodent_gbp import distributions
from rodent_gbp.errors import DataError, UsageError
from rodent_gbp.studies.common import context
from rodent_gbp.studies.common import gradients
from rodent_gbp.studies.common import lognormal_figures
from rodent_gbp.studies import lognormal

N = 20000


def _sample(law: str, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  if law == "lognormal":
    return rng.lognormal(mean=0.3, sigma=0.8, size=N)
  if law == "gamma":
    return rng.gamma(shape=5.0, scale=0.7, size=N)
  if law == "weibull":
    return 1.3 * rng.weibull(2.5, size=N)
  if law == "exponential":
    return rng.exponential(scale=2.0, size=N)
  raise ValueError(law)


@pytest.mark.parametrize("law,param,value", [
    ("lognormal", "sigma", 0.8),
    ("gamma", "shape", 5.0),
    ("weibull", "shape", 2.5),
])
def test_known_law_wins_by_aic_with_margin(law, param, value):
  v = distributions.fit_families(_sample(law, seed=1))
  assert v["winner"] == law
  assert v["aic_margin"] > 50.0, v["delta_aic"]
  assert v["delta_aic"][law] == 0.0
  assert all(d >= 0 for d in v["delta_aic"].values())
  # The MLE recovers the generating parameter.
  assert v["families"][law]["params"][param] == pytest.approx(value, rel=0.03)


def test_lognormal_params_are_closed_form_mle():
  x = _sample("lognormal", seed=2)
  p = distributions.fit_families(x)["families"]["lognormal"]["params"]
  logx = np.log(x)
  assert p["mu"] == pytest.approx(logx.mean(), rel=1e-6)
  assert p["sigma"] == pytest.approx(logx.std(), rel=1e-6)


def test_exponential_sample():
  # Gamma and Weibull nest the exponential (shape 1): their logL can only be a
  # little higher, so by AIC they lose by <= 2 (their extra parameter) and by
  # BIC by about ln n; the heavy-tailed log-normal and the normal lose clearly.
  v = distributions.fit_families(_sample("exponential", seed=3))
  f = v["families"]
  assert v["winner"] == "exponential"
  for nested in ("gamma", "weibull"):
    assert f[nested]["params"]["shape"] == pytest.approx(1.0, abs=0.03)
    assert 0.0 <= v["delta_aic"][nested] <= 2.0 + 1e-9
    assert f[nested]["bic"] - f["exponential"]["bic"] > math.log(N) - 2.0
  assert f["exponential"]["params"]["scale"] == pytest.approx(2.0, rel=0.03)
  assert v["delta_aic"]["lognormal"] > 100 and v["delta_aic"]["normal"] > 100


@pytest.mark.parametrize("law", ["lognormal", "gamma", "weibull", "exponential"])
def test_ks_matches_scipy_kstest_on_fitted_law(law):
  x = _sample(law, seed=4)[:3000]
  v = distributions.fit_families(x)
  for fam, r in v["families"].items():
    p = r["params"]
    frozen = {
        "lognormal": lambda: stats.lognorm(p["sigma"], loc=0, scale=p["scale"]),
        "normal": lambda: stats.norm(loc=p["mean"], scale=p["std"]),
        "gamma": lambda: stats.gamma(p["shape"], loc=0, scale=p["scale"]),
        "weibull": lambda: stats.weibull_min(p["shape"], loc=0, scale=p["scale"]),
        "exponential": lambda: stats.expon(loc=0, scale=p["scale"]),
    }[fam]()
    assert r["ks"] == pytest.approx(stats.kstest(x, frozen.cdf).statistic, abs=1e-12)
    assert r["loglik"] == pytest.approx(np.sum(frozen.logpdf(x)), rel=1e-12)


def test_fit_matches_scipy_fit_directly():
  # Fitting in rescaled units must give scipy's own MLE.
  x = _sample("weibull", seed=5)[:5000] * 1e-7
  p = distributions.fit_families(x, families=["weibull", "gamma"])["families"]
  c, _, s = stats.weibull_min.fit(x / 1e-7, floc=0)
  assert p["weibull"]["params"]["shape"] == pytest.approx(c, rel=1e-4)
  assert p["weibull"]["params"]["scale"] == pytest.approx(s * 1e-7, rel=1e-4)
  a, _, s = stats.gamma.fit(x / 1e-7, floc=0)
  assert p["gamma"]["params"]["shape"] == pytest.approx(a, rel=1e-4)


def test_aic_bic_formulas():
  v = distributions.fit_families(_sample("gamma", seed=6)[:4000])
  n = v["n_fitted"]
  assert n == 4000
  ks = {"lognormal": 2, "normal": 2, "gamma": 2, "weibull": 2, "exponential": 1}
  for fam, r in v["families"].items():
    assert r["k"] == ks[fam]
    assert r["aic"] == pytest.approx(2 * r["k"] - 2 * r["loglik"], rel=1e-12)
    assert r["bic"] == pytest.approx(r["k"] * math.log(n) - 2 * r["loglik"], rel=1e-12)
  aics = {f: r["aic"] for f, r in v["families"].items()}
  assert v["ranking"] == sorted(aics, key=aics.get)
  assert v["aic_margin"] == pytest.approx(aics[v["runner_up"]] - aics[v["winner"]])


def test_anderson_on_log_values():
  x = _sample("lognormal", seed=7)[:2000]
  a = distributions.fit_families(x)["anderson_log"]
  with pytest.warns(FutureWarning):  # scipy 1.17's legacy interface
    ref = stats.anderson(np.log(x), "norm")
  assert a["statistic"] == pytest.approx(ref.statistic)
  np.testing.assert_allclose(a["critical_values"], ref.critical_values)
  assert a["significance_levels"] == [15.0, 10.0, 5.0, 2.5, 1.0]
  assert not a["reject_5pct"]  # log of a log-normal sample is normal
  g = distributions.fit_families(_sample("exponential", seed=7)[:2000])["anderson_log"]
  assert g["reject_5pct"]


def test_zeros_error_or_exclude_counted():
  x = _sample("lognormal", seed=8)[:1000].copy()
  x[:37] = 0.0
  with pytest.raises(DataError, match="37 of 1000 samples are exactly 0"):
    distributions.fit_families(x)
  v = distributions.fit_families(x, zeros="exclude")
  assert (v["n_input"], v["n_zero"], v["n_positive"], v["n_fitted"]) == (1000, 37, 963, 963)
  ref = distributions.fit_families(x[37:])
  assert v["families"]["lognormal"]["aic"] == pytest.approx(ref["families"]["lognormal"]["aic"])


@pytest.mark.parametrize("bad,match", [
    (np.array([1.0, -0.5] + [1.0 + i for i in range(30)]), "negative"),
    (np.array([1.0, np.nan] + [1.0 + i for i in range(30)]), "non-finite"),
    (np.arange(1.0, 6.0), "at least"),
    (np.full(100, 3.0), "equal"),
])
def test_invalid_input_rejected(bad, match):
  with pytest.raises(DataError, match=match):
    distributions.fit_families(bad)


def test_bad_arguments():
  x = _sample("gamma", seed=9)[:500]
  with pytest.raises(UsageError, match="unknown families"):
    distributions.fit_families(x, families=["cauchy"])
  with pytest.raises(UsageError, match="zeros"):
    distributions.fit_families(x, zeros="drop")


def test_subsample_is_seeded_and_bounded():
  x = _sample("lognormal", seed=10)[:10000]
  a = distributions.fit_families(x, max_samples=2000, seed=3)
  b = distributions.fit_families(x, max_samples=2000, seed=3)
  c = distributions.fit_families(x, max_samples=2000, seed=4)
  assert a["n_fitted"] == 2000 and a["n_positive"] == 10000
  assert a["families"]["gamma"]["aic"] == b["families"]["gamma"]["aic"]
  assert a["families"]["gamma"]["aic"] != c["families"]["gamma"]["aic"]


def test_bootstrap_ks_pvalue():
  x = _sample("lognormal", seed=11)
  v = distributions.fit_families(x, families=["lognormal", "exponential"],
                             bootstrap=39, bootstrap_samples=800)
  ln, ex = v["families"]["lognormal"]["ks_bootstrap"], v["families"]["exponential"]["ks_bootstrap"]
  assert ln["n"] == 800 and ln["n_boot"] == 39
  assert ln["pvalue"] > 0.05
  assert ex["pvalue"] == pytest.approx(1 / 40)  # smallest attainable
  assert "ks_bootstrap" not in distributions.fit_families(x[:500])["families"]["gamma"]


@pytest.mark.parametrize("law,params", [
    ("lognormal", {"mu": 0.3, "sigma": 0.8, "scale": math.exp(0.3)}),
    ("gamma", {"shape": 5.0, "scale": 0.7}),
    ("weibull", {"shape": 2.5, "scale": 1.3}),
    ("exponential", {"scale": 2.0}),
])
def test_every_parameter_of_the_true_law_is_recovered(law, params):
  # n = 20000: the MLE's relative standard error is ~1 % or less for each.
  got = distributions.fit_families(_sample(law, seed=12))["families"][law]["params"]
  assert set(got) == set(params)
  for name, value in params.items():
    assert got[name] == pytest.approx(value, rel=0.03, abs=0.02), name


def test_a_gamma_sample_is_not_called_lognormal():
  # Gamma(shape 2): skewed like a log-normal but with a lighter left tail; the
  # log of it is not normal (Anderson-Darling rejects) and log-normal loses.
  x = np.random.default_rng(13).gamma(shape=2.0, scale=1.5, size=N)
  v = distributions.fit_families(x)
  assert v["winner"] == "gamma"
  assert v["delta_aic"]["lognormal"] > 100
  assert v["anderson_log"]["reject_5pct"]
  assert v["families"]["gamma"]["params"]["shape"] == pytest.approx(2.0, rel=0.03)


def test_summarise():
  vs = [distributions.fit_families(_sample(law, seed=s)[:3000])
        for law, s in [("lognormal", 20), ("lognormal", 21), ("gamma", 22), ("weibull", 23)]]
  s = distributions.summarise(vs + [None])
  assert s["n"] == 4 and s["n_skipped"] == 1
  assert s["win_fraction"]["lognormal"] == 0.5
  assert s["win_fraction"]["gamma"] == 0.25 and s["win_fraction"]["normal"] == 0.0
  assert s["median_aic_margin"] == pytest.approx(np.median([v["aic_margin"] for v in vs]))
  assert s["median_aic_margin_when_winning"]["lognormal"] == pytest.approx(
      np.median([vs[0]["aic_margin"], vs[1]["aic_margin"]]))
  assert s["median_aic_vs_lognormal"]["lognormal"] == 0.0
  assert distributions.summarise([None]) == {"n": 0, "n_skipped": 1}


def test_study_report_layout_and_zero_counts(tmp_path):
  rng = np.random.default_rng(30)
  ln = rng.lognormal(-3.0, 1.0, size=(3, 32, 32))
  ln[0, :4, :] = 0.0  # 128 zero-gradient pixels in slice 0
  ln[2] = 0.0         # an all-zero slice: skipped, not fitted
  gm = rng.gamma(5.0, 1.0, size=(3, 32, 32))
  report = lognormal.lognormal_study(
      {"trained": {"sum": ln}, "random": {"sum": gm}}, max_pixels=2000, seed=0)
  json.dumps(report)  # JSON-able
  t = report["networks"]["trained"]["sum"]
  assert t["zero_pixels"]["count"] == 128 + 1024
  assert t["zero_pixels"]["per_slice"] == [128, 0, 1024]
  assert t["pooled"]["n_zero"] == 128 + 1024 and t["pooled"]["winner"] == "lognormal"
  assert t["per_slice"][2]["skipped"] and t["slices"]["n_skipped"] == 1
  assert t["per_slice"][0]["winner"] == "lognormal"
  assert report["verdict"]["trained"]["sum"]["slice_win_fraction"]["lognormal"] == 1.0
  assert report["verdict"]["random"]["sum"]["pooled_winner"] == "gamma"
  md = lognormal.report_markdown(report)
  assert "| trained | sum |" in md and "| random | sum |" in md


def test_plot_lognormal_writes_figures(tmp_path):
  rng = np.random.default_rng(31)
  g = rng.lognormal(-3.0, 1.0, size=(2, 16, 16)).astype(np.float32)

  def steps(x):  # docs/design.md#enhancement-eq-1 enhancement, for the test only
    e = 1 + 255 * (x - x.min(axis=(-2, -1), keepdims=True)) / np.ptp(
        x, axis=(-2, -1), keepdims=True)
    v = np.log(e)
    z = (v - v.mean(axis=(-2, -1), keepdims=True)) / v.std(axis=(-2, -1), keepdims=True)
    return {"expanded": e, "log": v, "z": z, "enhanced": np.exp(-((z - 2) / 0.5)**2)}

  paths = lognormal_figures.plot_lognormal({"trained": g, "random": g * 2}, tmp_path,
                                           steps_fn=steps)
  names = sorted(p.name for p in paths)
  assert names == ["lognormal_fig5_random.png", "lognormal_fig5_trained.png", "lognormal_qq.png"]
  assert all(p.stat().st_size > 1000 for p in paths)


@pytest.fixture(scope="module")
def study_model(tmp_path_factory):
  from test_placement_study import build_study_model
  return build_study_model(tmp_path_factory.getbasetemp() / "study_model")


def test_binary_eq1_log_both_scores_on_a_bundle(tmp_path, study_model):
  from conftest import run_binary
  ctx = context.load_context(study_model, animals="test")
  run_binary("lognormal", [f"--model_dir={study_model}", f"--out_dir={tmp_path}",
                           "--quantity=eq1_log", "--score=both", "--max_pixels=500",
                           "--slice_max_pixels=60", "--bootstrap=9",
                           "--bootstrap_samples=200", "--nofigures"])
  assert "quantity `eq1_log`, score `logit`" in (tmp_path / "lognormal.md").read_text()
  saved = json.loads((tmp_path / "lognormal.json").read_text(),
                     parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
  assert saved["inputs"]["animals"] == ctx.split["test"]
  n = sum(v.image.shape[0] for v in ctx.test)
  assert saved["inputs"]["n_slices"] == n
  # One quantity keeps the test short; magnitude has the same layout (tests above).
  assert set(saved["studies"]) == {"eq1_log"}
  for quantity, by_score in saved["studies"].items():
    assert set(by_score) == {"probability", "logit"}
    for study in by_score.values():
      assert study["quantity"] == quantity and set(study["networks"]) == {"trained", "random"}
      for net in ("trained", "random"):
        assert set(study["networks"][net]) == {"sum", "wm", "gm", "csf"}
        s = study["networks"][net]["sum"]
        assert s["shape"] == [n, *ctx.bundle.slice_shape] and len(s["per_slice"]) == n
        assert s["zero_pixels"]["count"] == sum(s["zero_pixels"]["per_slice"])
        if quantity == "magnitude":
          assert s["pooled"]["n_positive"] + s["pooled"]["n_zero"] == n * 64 * 64
        else:  # every pixel is fitted, zeros (q = 0) included
          assert s["pooled"]["n_zero"] == 0 and s["pooled"]["n_input"] == n * 64 * 64
          assert s["pooled"]["n_zero_q"] == s["zero_pixels"]["count"]
        assert s["pooled"]["families"]["lognormal"]["ks_bootstrap"]["n_boot"] == 9
  # The two scores give different gradient images.
  pz = saved["studies"]["eq1_log"]
  assert (pz["probability"]["networks"]["trained"]["sum"]["pooled"]["families"]["lognormal"]
          != pz["logit"]["networks"]["trained"]["sum"]["pooled"]["families"]["lognormal"])


def test_flags_parse():
  from absl import flags
  from conftest import imported_binary
  with imported_binary("lognormal"):
    f = flags.FLAGS
    f(["lognormal", "--model_dir=x", "--out_dir=y", "--quantity=eq1_log", "--score=logit"])
    assert (f.quantity, f.score, f.bootstrap) == ("eq1_log", "logit", 99)
    f.unparse_flags()
    f(["lognormal", "--model_dir=x", "--out_dir=y"])
    assert (f.quantity, f.score) == ("both", "both")
    f.unparse_flags()
    with pytest.raises(flags.IllegalFlagValueError):
      f(["lognormal", "--model_dir=x", "--out_dir=y", "--quantity=log"])
    f.unparse_flags()


def _eq1_exact_slice(q: np.ndarray) -> np.ndarray:
  """G (H, W) whose Eq. 1 value is exactly ``q``: ``G~ = (e^q - 1) / 255``.

  ``q`` must hold one 0 and one ln 256 so that the min-max scaling of Eq. 1
  leaves ``G~ = G`` (G's min 0 and max 1).
  """
  return (np.exp(q) - 1.0) / 255.0


def test_eq1_log_normal_q_is_judged_normal():
  rng = np.random.default_rng(40)
  q = rng.normal(2.8, 0.55, size=(100, 100))
  q = np.clip(q, 1e-3, math.log(256) - 1e-3)
  q[0, 0], q[0, 1] = 0.0, math.log(256.0)
  g = _eq1_exact_slice(q)
  y = gradients.eq1_values(g)
  np.testing.assert_allclose(np.log(y), q, atol=1e-12)
  r = lognormal.study_target(g[None], quantity="eq1_log", max_pixels=None)
  v = r["pooled"]
  assert v["n_fitted"] == 10000 and r["zero_pixels"]["per_slice"] == [1]
  # q normal = y log-normal; the skew-normal of q nests it (a = 0): within 2 + noise.
  assert v["winner"] in ("lognormal", "logskewnormal")
  assert v["delta_aic"]["lognormal"] <= 2.0
  for other in ("normal", "gamma", "weibull", "exponential"):
    assert v["delta_aic"][other] > 20, v["delta_aic"]
  p = v["families"]["lognormal"]["params"]
  assert p["mu"] == pytest.approx(2.8, abs=0.02) and p["sigma"] == pytest.approx(0.55, rel=0.03)
  assert not v["anderson_log"]["reject_5pct"]  # AD of q against the normal


def test_eq1_log_skewed_q_is_not_called_normal():
  rng = np.random.default_rng(41)
  q = math.log(256.0) * rng.beta(1.5, 6.0, size=(100, 100))  # right-skewed on [0, ln 256]
  q[0, 0], q[0, 1] = 0.0, math.log(256.0)
  v = lognormal.study_target(_eq1_exact_slice(q)[None], quantity="eq1_log",
                             max_pixels=None)["pooled"]
  assert v["winner"] != "lognormal" and v["delta_aic"]["lognormal"] > 50
  assert v["anderson_log"]["reject_5pct"]


def test_eq1_log_zeros_included_and_counted():
  rng = np.random.default_rng(42)
  g = rng.lognormal(-3.0, 1.0, size=(2, 32, 32))
  g[0, :5, :] = 0.0                # 160 zeros: G~ = 0, q = 0, y = 1
  g[1] += 0.5                      # no zero: the min pixel maps to q = 0
  rm = lognormal.study_target(g, quantity="magnitude", max_pixels=None)
  rq = lognormal.study_target(g, quantity="eq1_log", max_pixels=None)
  assert rm["zero_pixels"]["per_slice"] == [160, 0]
  assert rq["zero_pixels"]["per_slice"] == [160, 1]
  assert rm["pooled"]["n_fitted"] == 2 * 1024 - 160  # dropped
  assert rq["pooled"]["n_fitted"] == 2 * 1024 and rq["pooled"]["n_zero_q"] == 161  # kept
  assert rq["per_slice"][0]["n_zero"] == 160
  y0 = gradients.eq1_values(g[0])
  assert y0.min() == 1.0 and y0.max() == 256.0 and np.sum(y0 == 1.0) == 160
  # A constant slice has no G~: skipped, counted as all-zero.
  rc = lognormal.study_target(np.zeros((1, 8, 8)), quantity="eq1_log")
  assert rc["per_slice"][0]["skipped"] and rc["zero_pixels"]["count"] == 64
  with pytest.raises(UsageError, match="quantity"):
    lognormal.study_target(g, quantity="log")


def test_magnitude_of_lognormal_slices_with_zeros_is_lognormal():
  rng = np.random.default_rng(43)
  g = rng.lognormal(-4.0, 0.9, size=(4, 40, 40))
  g[:, :3] = 0.0
  r = lognormal.lognormal_study({"trained": {"sum": g}}, quantity="magnitude",
                                max_pixels=None, bootstrap=19, bootstrap_samples=500)
  v = r["verdict"]["trained"]["sum"]
  assert v["pooled_winner"] == "lognormal" and v["slice_win_fraction"]["lognormal"] == 1.0
  assert v["pooled_anderson_log_statistic"] < v["pooled_anderson_log_critical_5pct"]
  assert v["pooled_lognormal_ks_bootstrap"]["pvalue"] > 0.05
  assert v["sentence"].startswith("magnitude G > 0: pooled AIC ranks G lognormal first")
  assert "logskewnormal" not in r["families"]


def test_plot_slice_fits(tmp_path):
  rng = np.random.default_rng(44)
  g = rng.lognormal(-3.0, 1.0, size=(32, 32))
  g[:4] = 0.0
  p = lognormal_figures.plot_slice_fits(g, tmp_path / "s.png", label="test")
  assert 1000 < p.stat().st_size < 300_000


def test_binary_bad_input_ends_in_one_error_line(tmp_path, study_model, capsys):
  from conftest import run_binary
  for argv, want in (([f"--model_dir={tmp_path / 'none'}"], f"error: {tmp_path / 'none'}: "),
                     ([f"--model_dir={study_model}", "--max_pixels=5"],
                      "error: max_pixels must be at least 20")):
    with pytest.raises(SystemExit) as e:
      run_binary("lognormal", [*argv, f"--out_dir={tmp_path / 'out'}"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(want), err
