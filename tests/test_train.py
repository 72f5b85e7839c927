"""Training: Dice loss and lr known answers, one real step, checkpoints, resume."""

from __future__ import annotations

import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rodent_gbp.training import checkpoint
from rodent_gbp import configs
from rodent_gbp import data
from rodent_gbp import errors
from rodent_gbp.training import losses
from rodent_gbp import metrics
from rodent_gbp import model as model_lib
from rodent_gbp import phantom
from rodent_gbp.training import trainer
from rodent_gbp.training import optim
from rodent_gbp.training import augment
from rodent_gbp.training import tissue

# ---------------------------------------------------------------- Dice loss --

# One image of 1 x 4 pixels, two classes: truth 0 0 1 1.
_TRUTH = jax.nn.one_hot(jnp.array([[[0, 0, 1, 1]]]), 2, dtype=jnp.float32)
# Prediction: pixel 1 leans to class 1, pixel 2 undecided.
_PROBS = jnp.array([[[[1.0, 0.0], [0.25, 0.75], [0.5, 0.5], [0.0, 1.0]]]], jnp.float32)


def test_dice_perfect_is_zero():
  assert float(losses.dice_loss(_TRUTH, _TRUTH)) == 0.0
  assert float(losses.dice_loss(_TRUTH, _TRUTH, smooth=0.0)) == 0.0


def test_dice_disjoint_is_one():
  wrong = _TRUTH[..., ::-1]
  assert float(losses.dice_loss(wrong, _TRUTH, smooth=1e-7)) == pytest.approx(1.0, abs=1e-6)
  # With the default smoothing: 1 - 1 / (P + G + 1) per class, P = G = 2.
  assert float(losses.dice_loss(wrong, _TRUTH)) == pytest.approx(1 - 1 / 5, abs=1e-6)


def test_dice_partial_overlap_by_hand():
  # Class 0: I = 1 + 0.25 = 1.25, P = 1.75, G = 2 -> D0 = 2.5 / 3.75 = 2/3.
  # Class 1: I = 0.5 + 1 = 1.5,  P = 2.25, G = 2 -> D1 = 3 / 4.25 = 12/17.
  d0, d1 = 2 / 3, 12 / 17
  got = float(losses.dice_loss(_PROBS, _TRUTH, smooth=0.0))
  assert got == pytest.approx(1 - (d0 + d1) / 2, abs=1e-6)
  got = float(losses.dice_loss(_PROBS, _TRUTH, smooth=0.0, include_background=False))
  assert got == pytest.approx(1 - d1, abs=1e-6)
  # smooth = 1 adds 1 to numerator and denominator of each class.
  got = float(losses.dice_loss(_PROBS, _TRUTH))
  assert got == pytest.approx(1 - (3.5 / 4.75 + 4 / 5.25) / 2, abs=1e-6)


def test_dice_pools_the_batch_and_survives_absent_classes():
  # Two images = the same pixels side by side: pooled Dice is identical.
  probs2 = jnp.concatenate([_PROBS[..., :2, :], _PROBS[..., 2:, :]], axis=0)
  truth2 = jnp.concatenate([_TRUTH[..., :2, :], _TRUTH[..., 2:, :]], axis=0)
  assert float(losses.dice_loss(probs2, truth2, smooth=0.0)) == pytest.approx(
      float(losses.dice_loss(_PROBS, _TRUTH, smooth=0.0)), abs=1e-6)
  # A third class absent from truth and prediction: D = 1, no NaN, finite grad.
  pad = lambda x: jnp.concatenate([x, jnp.zeros_like(x[..., :1])], axis=-1)
  loss, grad = jax.value_and_grad(losses.dice_loss)(pad(_PROBS), pad(_TRUTH))
  d0, d1 = 3.5 / 4.75, 4 / 5.25
  assert float(loss) == pytest.approx(1 - (d0 + d1 + 1) / 3, abs=1e-6)
  assert np.all(np.isfinite(grad))


def test_loss_names():
  logits = jnp.log(_PROBS + 1e-3)
  labels = jnp.array([[[0, 0, 1, 1]]], jnp.int32)
  dice, terms = losses.segmentation_loss(logits, labels, "dice")
  assert set(terms) == {"dice_loss"}
  both, terms = losses.segmentation_loss(logits, labels, "dice_ce")
  assert float(both) == pytest.approx(float(terms["dice_loss"] + terms["ce"]), abs=1e-6)
  assert float(terms["ce"]) > 0
  with pytest.raises(ValueError, match="unknown loss"):
    losses.segmentation_loss(logits, labels, "l2")


# ------------------------------------------------------- optimiser and step --

def test_paper_config_is_exact():
  c = configs.get_config("paper")
  assert (c.optimizer, c.learning_rate, c.decay, c.momentum, c.nesterov, c.batch_size,
          c.loss) == ("sgd", 3e-4, 1.5e-6, 0.9, False, 5, "dice")


def test_learning_rate_time_based_decay():
  lr = optim.learning_rate_fn(configs.get_config("paper"))
  for t in (0, 1, 1000):
    assert float(lr(t)) == pytest.approx(3e-4 / (1 + 1.5e-6 * t), rel=1e-6)
  assert float(lr(1000)) == pytest.approx(2.9955067e-4, rel=1e-6)


def test_optimizer_is_sgd_momentum_on_the_schedule():
  c = configs.get_config("paper")
  tx = optim.make_optimizer(c)
  p = {"w": jnp.zeros(3, jnp.float32)}
  g1, g2 = {"w": jnp.array([1.0, 2, 3])}, {"w": jnp.array([0.5, 0, -1])}
  s = tx.init(p)
  u1, s = tx.update(g1, s, p)
  u2, s = tx.update(g2, s, p)
  lr = optim.learning_rate_fn(c)
  np.testing.assert_allclose(u1["w"], -lr(0) * g1["w"], rtol=1e-6)
  np.testing.assert_allclose(u2["w"], -lr(1) * (g2["w"] + 0.9 * g1["w"]), rtol=1e-6)


def _tiny_batch():
  rng = np.random.default_rng(0)
  label = np.zeros((2, 16, 16), np.int32)
  label[:, 4:12, 4:12] = 2
  label[:, 6:10, 6:10] = 1
  label[:, 4:6, 4:6] = 3  # off the H midline, so an H flip shows
  means = np.array([0.0, 0.45, 0.62, 1.0], np.float32)
  image = means[label] + rng.normal(0, 0.04, label.shape).astype(np.float32)
  return {"image": image[..., None], "label": label}


def test_one_real_step_lowers_the_loss():
  config = configs.override(configs.get_config("smoke"), augment=False)
  model = model_lib.build_unet(config)
  state = trainer.create_train_state(config, jax.random.PRNGKey(0), (16, 16))
  batch = _tiny_batch()

  def loss_of(params):
    logits = model.apply({"params": params}, batch["image"])
    return float(losses.segmentation_loss(logits, batch["label"], config.loss)[0])

  before = loss_of(state.params)
  step = jax.jit(functools.partial(tissue.train_step, model=model, config=config),
                 donate_argnums=0)
  grads = jax.grad(lambda p: losses.segmentation_loss(
      model.apply({"params": p}, batch["image"]), batch["label"], config.loss)[0])(state.params)
  want_norm = np.sqrt(sum(float(np.sum(np.square(g))) for g in jax.tree.leaves(grads)))
  state, metrics = step(state, batch)
  assert float(metrics["loss"]) == pytest.approx(before, rel=1e-5)
  assert float(metrics["grad_norm"]) == pytest.approx(want_norm, rel=1e-4)
  assert int(state.step) == 1
  assert loss_of(state.params) < before


def test_clipping_scales_a_large_gradient_to_the_norm():
  c = configs.override(configs.get_config("paper"), clip_grad_norm=1.0)
  assert configs.get_config("paper").clip_grad_norm == 0.0   # the paper clips nothing
  assert configs.get_config("default").clip_grad_norm > 0
  tx = optim.make_optimizer(c)
  p = {"a": jnp.zeros(2, jnp.float32), "b": jnp.zeros(1, jnp.float32)}
  g = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([4.0])}     # global norm 5
  u, s = tx.update(g, tx.init(p), p)
  lr = float(optim.learning_rate_fn(c)(0))
  np.testing.assert_allclose(u["a"], [-lr * 3 / 5, 0.0], rtol=1e-6)
  np.testing.assert_allclose(u["b"], [-lr * 4 / 5], rtol=1e-6)
  small = {"a": jnp.array([0.3, 0.0]), "b": jnp.array([0.4])}  # norm 0.5: untouched
  u2, _ = tx.update(small, s, p)
  np.testing.assert_allclose(u2["b"], [-float(optim.learning_rate_fn(c)(1)) * (0.4 + 0.9 * 0.8)],
                             rtol=1e-6)
  # The paper's optimiser passes the same large gradient unclipped.
  paper = optim.make_optimizer(configs.get_config("paper"))
  u, _ = paper.update(g, paper.init(p), p)
  np.testing.assert_allclose(u["a"], [-lr * 3, 0.0], rtol=1e-6)
  np.testing.assert_allclose(u["b"], [-lr * 4], rtol=1e-6)
  # Clipping leaves the optimiser state's structure as it is, so a checkpoint
  # trained without clipping resumes with it (and the other way round).
  assert jax.tree.structure(tx.init(p)) == jax.tree.structure(paper.init(p))


def test_a_clipped_step_applies_the_clipped_gradient():
  # Oracle: the gradient by hand, clipped with numpy, one SGD step (momentum's
  # first step is the plain gradient step).
  base = configs.override(configs.get_config("smoke"), augment=False)
  model = model_lib.build_unet(base)
  batch = _tiny_batch()
  state = trainer.create_train_state(base, jax.random.PRNGKey(0), (16, 16))
  grads = jax.device_get(jax.grad(lambda p: losses.segmentation_loss(
      model.apply({"params": p}, batch["image"]), batch["label"], base.loss)[0])(state.params))
  norm = np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in jax.tree.leaves(grads)))
  clip = float(norm) / 4
  config = configs.override(base, clip_grad_norm=clip)
  lr0 = float(optim.learning_rate_fn(config)(0))
  want = jax.tree.map(lambda p, g: np.asarray(p) - lr0 * np.asarray(g) * (clip / norm),
                      jax.device_get(state.params), grads)
  step = jax.jit(functools.partial(tissue.train_step, model=model, config=config))
  new, metrics = step(state, batch)
  assert float(metrics["grad_norm"]) == pytest.approx(norm, rel=1e-4)  # before clipping
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-7),
               jax.device_get(new.params), want)
  moved = np.sqrt(sum(np.sum(np.square(np.asarray(a) - np.asarray(b), dtype=np.float64))
                      for a, b in zip(jax.tree.leaves(jax.device_get(new.params)),
                                      jax.tree.leaves(jax.device_get(state.params)))))
  assert moved == pytest.approx(lr0 * clip, rel=1e-3)


def test_a_stored_config_without_clip_grad_norm_loads_unclipped():
  # Checkpoints written before the field existed trained without clipping.
  for name in ("default", "paper", "smoke"):
    stored = configs.get_config(name).to_dict()
    del stored["clip_grad_norm"]
    loaded = configs.from_dict(stored)
    assert loaded.clip_grad_norm == 0.0
    assert configs.differences(loaded, configs.get_config(name),
                               ignore=("clip_grad_norm",)) == {}


def test_check_finite_names_the_first_bad_step_and_what_to_change(tmp_path):
  ok = np.ones(5, np.float32)
  smoke, default = configs.get_config("smoke"), configs.get_config("default")
  optim.check_finite(ok, ok, config=smoke, epoch=0, first_step=0, checkpoint_dir=tmp_path)
  norms = np.array([1.0, 2.0, np.nan, np.inf, 1.0], np.float32)
  losses_ = np.array([0.5, 0.4, 0.3, np.nan, np.nan], np.float32)
  with pytest.raises(errors.TrainingError) as e:
    optim.check_finite(losses_, norms, config=smoke, epoch=2, first_step=10,
                       checkpoint_dir=tmp_path)
  msg = str(e.value)
  # Steps 11-15 of the run; the third (step 13) has a finite loss, a NaN gradient.
  assert "non-finite gradient at epoch 3, step 13 (config 'smoke')" in msg
  for advice in ("--learning_rate, now 0.05", "clip_grad_norm > 0", "--clip_grad_norm",
                 "default clips at 2", "or train with the default config",
                 f"earlier epochs in {tmp_path} are kept"):
    assert advice in msg, advice
  # A run that already clips, with the default config: only the learning rate is left.
  with pytest.raises(errors.TrainingError) as e:
    optim.check_finite(losses_, ok, config=default, epoch=0, first_step=0,
                       checkpoint_dir=tmp_path)
  msg = str(e.value)
  assert "non-finite loss at epoch 1, step 4" in msg and "--learning_rate" in msg
  assert "clip_grad_norm" not in msg and "default config" not in msg
  assert f"No epoch was completed, so {tmp_path} holds no checkpoint" in msg


def test_augment_is_deterministic_and_flips_label_with_image():
  batch = _tiny_batch()
  key = jax.random.fold_in(jax.random.PRNGKey(0), 7)
  a_img, a_lab = augment.flip_and_scale(key, batch["image"], batch["label"])
  b_img, b_lab = augment.flip_and_scale(key, batch["image"], batch["label"])
  np.testing.assert_array_equal(a_img, b_img)
  np.testing.assert_array_equal(a_lab, b_lab)
  for i in range(2):
    flipped = not np.array_equal(a_lab[i], batch["label"][i])
    src_img = batch["image"][i, ::-1] if flipped else batch["image"][i]
    src_lab = batch["label"][i, ::-1] if flipped else batch["label"][i]
    np.testing.assert_array_equal(a_lab[i], src_lab)
    scale = np.asarray(a_img[i]).sum() / src_img.sum()
    assert 0.9 <= scale <= 1.1
    np.testing.assert_allclose(a_img[i], src_img * scale, rtol=1e-5, atol=1e-6)


def test_eval_step_counts_match_numpy_and_mask_input():
  config = configs.get_config("smoke")
  model = model_lib.build_unet(config)
  params = trainer.create_train_state(config, jax.random.PRNGKey(2), (16, 16)).params
  batch = _tiny_batch()
  out = losses.eval_step(params, batch, model=model)
  pred, truth = np.asarray(out["pred"]), batch["label"]
  for c in range(4):
    tp = ((pred == c) & (truth == c)).sum(axis=(1, 2))
    fp = ((pred == c) & (truth != c)).sum(axis=(1, 2))
    fn = ((pred != c) & (truth == c)).sum(axis=(1, 2))
    np.testing.assert_array_equal(out["counts"][:, c], np.stack([tp, fp, fn], -1))
  # Manual background removal = feeding the image times the true mask.
  mask = truth > 0
  masked = losses.eval_step(params, dict(batch, brainmask=mask), model=model)
  stripped = losses.eval_step(
      params, dict(batch, image=batch["image"] * mask[..., None]), model=model)
  np.testing.assert_array_equal(masked["counts"], stripped["counts"])
  # Padding slices count zero.
  padded = losses.eval_step(params, dict(batch, valid=np.array([True, False])),
                           model=model)
  np.testing.assert_array_equal(padded["counts"][1], 0)
  np.testing.assert_array_equal(padded["counts"][0], out["counts"][0])


def test_dice_from_counts_nan_policy():
  d = np.asarray(metrics.dice_from_counts(np.array([[3, 1, 1], [0, 0, 0], [0, 2, 0]])))
  np.testing.assert_allclose(d[[0, 2]], [6 / 8, 0.0])
  assert np.isnan(d[1])


# ------------------------------------------- the device-resident epoch --

def test_epoch_rows_are_the_data_layers_batches():
  n, b = 23, 4
  for epoch in (0, 3):
    rows = trainer.epoch_rows(n, b, seed=5, epoch=epoch)
    want = [x["i"] for x in data.iterate_batches({"i": np.arange(n)}, b, seed=5,
                                                  epoch=epoch, shuffle=True,
                                                  drop_remainder=True)]
    assert rows.shape == (n // b, b) and rows.dtype == np.int32
    np.testing.assert_array_equal(rows, np.stack(want))
  # A permutation per epoch: no slice twice, epochs differ.
  assert len(set(trainer.epoch_rows(n, b, seed=5, epoch=0).ravel())) == (n // b) * b
  assert not np.array_equal(trainer.epoch_rows(n, b, seed=5, epoch=0),
                            trainer.epoch_rows(n, b, seed=5, epoch=1))


def test_indexed_step_is_the_step_on_the_gathered_batch():
  config = configs.override(configs.get_config("smoke"), augment=True)
  model = model_lib.build_unet(config)
  rng = np.random.default_rng(1)
  slices = {"image": rng.normal(size=(6, 16, 16, 1)).astype(np.float32),
            "label": rng.integers(0, 4, (6, 16, 16)).astype(np.int32)}
  rows = np.array([[4, 0], [5, 2], [1, 3]], np.int32)
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  indexed = jax.jit(lambda s, sl, r, i: tissue.train_step(
      s, trainer.gather(sl, r, i, sharding), model=model, config=config))
  plain = jax.jit(functools.partial(tissue.train_step, model=model, config=config))
  a = b = trainer.create_train_state(config, jax.random.PRNGKey(0), (16, 16))
  for i in range(3):
    a, ma = indexed(a, slices, rows, np.int32(i))
    b, mb = plain(b, {k: v[rows[i]] for k, v in slices.items()})
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-6)
  assert int(a.step) == 3
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7),
                         a.params, b.params)


# ------------------------------------------------------- checkpoint module --

def _import_graph() -> dict[str, set[str]]:
  """rodent_gbp module -> the rodent_gbp modules it imports (anywhere in the file)."""
  import ast
  import pathlib
  root = pathlib.Path(tissue.__file__).parent.parent
  names = {}
  for path in root.rglob("*.py"):
    parts = path.relative_to(root.parent).with_suffix("").parts
    names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  graph = {}
  for name, path in names.items():
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rodent_gbp"):
        deps |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in names
                 else node.module for a in node.names}
      elif isinstance(node, ast.Import):
        deps |= {a.name for a in node.names if a.name.startswith("rodent_gbp.")}
    graph[name] = {d for d in deps if d in names and d not in (name, "rodent_gbp")}
  return graph


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
  seen, todo = set(), list(graph[start])
  while todo:
    m = todo.pop()
    if m not in seen:
      seen.add(m)
      todo += graph[m]
  return seen


def test_no_module_imports_itself_through_a_cycle():
  graph = _import_graph()
  assert len(graph) > 10 and "rodent_gbp.training.checkpoint" in _reaches(graph, "rodent_gbp.training.tissue")
  assert "rodent_gbp.training.tissue" not in _reaches(graph, "rodent_gbp.training.checkpoint")
  cyclic = sorted(name for name in graph if name in _reaches(graph, name))
  assert not cyclic, f"modules on an import cycle: {cyclic}"
  assert checkpoint.CheckpointError is errors.CheckpointError


def _tiny_state(value: float) -> dict:
  return {"params": {"w": np.full((2, 3), value, np.float32)}, "opt_state": {"m": np.zeros(1, np.float32)},
          "step": np.int32(value), "rng": np.zeros(2, np.uint32),
          "best_val_dice": np.float32(0), "epoch": np.int32(value)}


def _save_epochs(d, scores, *, track_best: bool) -> None:
  manager = checkpoint.open_for_training(d, track_best=track_best, fresh=True)
  for epoch, score in enumerate(scores):
    checkpoint.save(manager, epoch, _tiny_state(epoch), {"epoch": epoch, "history": []},
                    score if track_best else None)
  manager.close()


def test_manager_keeps_the_latest_and_the_best_by_score(tmp_path):
  # Best is epoch 1 (0.5; epoch 4 ties it and, being later, wins); NaN ranks lowest.
  _save_epochs(tmp_path, [0.1, 0.5, float("nan"), 0.2, 0.5, 0.3], track_best=True)
  on_disk = sorted(int(p.name) for p in (tmp_path / checkpoint.EPOCHS_DIR).iterdir())
  assert on_disk == [4, 5] and checkpoint.MAX_TO_KEEP == 2
  template = {"params": {"w": np.zeros((2, 3), np.float32)}}
  assert checkpoint.restore(tmp_path, "best", template)[0]["params"]["w"][0, 0] == 4
  assert checkpoint.read_meta(tmp_path, "latest")["epoch"] == 5
  _save_epochs(tmp_path, [0.1, 0.9, 0.3, 0.2], track_best=True)
  on_disk = sorted(int(p.name) for p in (tmp_path / checkpoint.EPOCHS_DIR).iterdir())
  assert on_disk == [1, 2, 3]  # fresh: the earlier run's epochs are gone
  assert checkpoint.read_meta(tmp_path, "best")["epoch"] == 1
  assert checkpoint.restore(tmp_path, "best", template)[0]["params"]["w"][0, 0] == 1
  # trainer.kept_index picks what Orbax picks.
  history = [{"epoch": e, "val_dice": {}, "val_mean_tissue_dice": s}
             for e, s in enumerate([0.1, 0.9, 0.3, 0.2])]
  assert trainer.kept_index(history) == 1
  assert trainer.kept_index(history[:1] + [dict(history[0], epoch=1)]) == 1  # tie: later
  assert trainer.kept_index([dict(h, val_mean_tissue_dice=None) for h in history]) == 3


def test_manager_without_validation_keeps_the_latest(tmp_path):
  _save_epochs(tmp_path, [None] * 4, track_best=False)
  on_disk = sorted(int(p.name) for p in (tmp_path / checkpoint.EPOCHS_DIR).iterdir())
  assert on_disk == [2, 3]
  assert checkpoint.read_meta(tmp_path, "best")["epoch"] == 3
  assert checkpoint.exists(tmp_path, "best") and not checkpoint.exists(tmp_path / "x")
  assert checkpoint.read_meta(tmp_path / "x") is None


# ------------------------------------------------- end to end, checkpoints --

def _leaves_equal(a, b) -> None:
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(
      np.asarray(x), np.asarray(y)), a, b)


def test_smoke_run_end_to_end(smoke_run):
  r = smoke_run
  assert len(r.history) == r.config.epochs
  h = r.history[-1]
  assert h["step"] == 120 // r.config.batch_size  # 3 train animals x 40 slices
  assert np.isfinite(h["loss"]) and h["images_per_s"] > 0
  assert 0 < h["grad_norm_median"] <= h["grad_norm_max"] < np.inf
  assert set(h["val_dice"]) == {"background", "wm", "gm", "csf"}
  assert r.best_val_dice == pytest.approx(h["val_mean_tissue_dice"])
  assert sorted(sum(r.split.values(), [])) == [f"rat{i:02d}" for i in range(5)]
  d = r.checkpoint_dir
  for name in ("config.json", "split.json", "normalisation.json", "epochs/0/meta",
               "epochs/0/params"):
    assert (d / name).exists(), name
  for which in ("latest", "best"):
    meta = checkpoint.read_meta(d, which)
    assert (meta["epoch"], meta["step"], meta["kept"], meta["kept_epoch"]) == (0, 30, "best", 0)
    assert meta["history"][0]["loss"] == pytest.approx(h["loss"])
  summary = tissue.training_summary(r.history, r.config)
  assert (summary["kept"], summary["best_epoch"]) == ("best", 1)
  assert json.loads((d / "config.json").read_text()) == r.config.to_dict()
  # Inference can re-apply the training normalisation from the stored record.
  norm = json.loads((d / "normalisation.json").read_text())
  x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
  np.testing.assert_allclose(data.apply_normalisation(x, norm),
                             data.normalise_intensity(x)[0])
  assert set(norm["per_animal"]) == set(sum(r.split.values(), []))


def test_checkpoint_restores_identical_params(smoke_run):
  loaded = checkpoint.load_model(smoke_run.checkpoint_dir)
  assert loaded.config == smoke_run.config
  _leaves_equal(loaded.params, smoke_run.params)
  assert loaded.extras["split"] == smoke_run.split
  assert loaded.normalisation["method"] == "robust_max"


def test_resume_continues_from_latest(smoke_run, phantom_dir, tmp_path):
  # Resuming epoch 1 of a copy must match two epochs trained straight through.
  two = configs.override(smoke_run.config, epochs=2)
  shutil.copytree(smoke_run.checkpoint_dir, tmp_path / "resumed" / "checkpoints")
  resumed = tissue.train_and_evaluate(two, tmp_path / "resumed", data_dir=phantom_dir,
                                     resume=True)
  assert [h["epoch"] for h in resumed.history] == [0, 1]
  assert resumed.history[0] == smoke_run.history[0]
  assert resumed.history[1]["step"] == 2 * smoke_run.history[0]["step"]
  straight = tissue.train_and_evaluate(two, tmp_path / "straight", data_dir=phantom_dir)
  latest = lambda r: checkpoint.restore(r.checkpoint_dir, "latest",
                                        trainer.abstract_checkpoint_state(two))[0]
  _leaves_equal(latest(resumed), latest(straight))
  assert resumed.history[1]["loss"] == straight.history[1]["loss"]
  kept = trainer.kept_index(straight.history)
  for r in (resumed, straight):
    meta = checkpoint.read_meta(r.checkpoint_dir, "best")
    assert meta["epoch"] == meta["kept_epoch"] == kept
    _leaves_equal(checkpoint.load_model(r.checkpoint_dir).params, r.params)


def test_experiment_binary_resumes_in_process(smoke_run, phantom_dir, tmp_path, binary):
  shutil.copytree(smoke_run.checkpoint_dir, tmp_path / "checkpoints")
  # Epoch 0 is already done: the binary restores, parses overrides, trains nothing.
  binary("train", [f"--workdir={tmp_path}", f"--data_dir={phantom_dir}",
                   "--config=smoke", "--resume", "--epochs=1", "--batch_size=4"])
  _leaves_equal(checkpoint.load_model(tmp_path / "checkpoints").params, smoke_run.params)


def test_checkpoint_errors_name_the_folder(smoke_run, tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
    checkpoint.load_model(tmp_path / "nowhere")
  d = tmp_path / "ck"
  shutil.copytree(smoke_run.checkpoint_dir, d)
  # Another U-Net width in config.json: a shape mismatch, named with the folder.
  cfg = json.loads((d / "config.json").read_text())
  (d / "config.json").write_text(json.dumps(dict(cfg, features=8)))
  with pytest.raises(checkpoint.CheckpointError, match=f"{d}/epochs/0 do not match"):
    checkpoint.load_model(d)
  (d / "config.json").write_text(json.dumps(cfg))
  for p in (d / "epochs" / "0" / "meta").iterdir():
    if p.is_file():
      p.write_text("{not json")
  with pytest.raises(checkpoint.CheckpointError, match=f"corrupt checkpoint meta in {d}"):
    checkpoint.load_model(d)
  shutil.rmtree(d / "epochs")
  with pytest.raises(checkpoint.CheckpointError, match=f"no complete checkpoint 'best' in {d}"):
    checkpoint.load_model(d)


def test_interrupted_save_keeps_a_whole_checkpoint(smoke_run, phantom_dir, tmp_path):
  d = tmp_path / "checkpoints"
  shutil.copytree(smoke_run.checkpoint_dir, d)
  template = trainer.abstract_checkpoint_state(smoke_run.config)
  want = checkpoint.restore(d, "latest", template)[0]
  # Killed while Orbax wrote epoch 1: its temporary folder is not a checkpoint.
  partial = d / "epochs" / "1.orbax-checkpoint-tmp"
  (partial / "params").mkdir(parents=True)
  assert checkpoint.read_meta(d, "latest")["epoch"] == 0
  _leaves_equal(checkpoint.restore(d, "latest", template)[0], want)
  # Resuming from it trains epoch 1 and removes the leftover.
  two = configs.override(smoke_run.config, epochs=2)
  tissue.train_and_evaluate(two, tmp_path, data_dir=phantom_dir, resume=True)
  assert not partial.exists()
  assert checkpoint.read_meta(d, "latest")["epoch"] == 1


def test_max_train_seconds_stops_early(smoke_run, phantom_dir, tmp_path):
  config = configs.override(smoke_run.config, epochs=3, max_train_seconds=1e-3)
  r = tissue.train_and_evaluate(config, tmp_path, data_dir=phantom_dir)
  assert len(r.history) == 1 and r.history[0]["partial_epoch"]
  assert r.history[0]["step"] == 1  # the limit is checked after every step
  assert checkpoint.exists(r.checkpoint_dir, "latest")
  # The epoch's one step: its gradient norm, recomputed from the initial state
  # on the epoch's first batch, is the epoch's max and median.
  volumes = {v.animal_id: v for v in data.load_dataset(phantom_dir)}
  stack = data.stack_slices([volumes[a] for a in r.split["train"]])
  rows = trainer.epoch_rows(len(stack["label"]), config.batch_size, seed=config.seed, epoch=0)
  image, label = stack["stripped"][rows[0]], stack["label"][rows[0]]
  model = model_lib.build_unet(config)
  state = trainer.create_train_state(config, jax.random.PRNGKey(config.seed), image.shape[1:3])
  grads = jax.grad(lambda p: losses.segmentation_loss(
      model.apply({"params": p}, image), label, config.loss)[0])(state.params)
  norm = float(optax.tree.norm(grads))
  assert r.history[0]["grad_norm_max"] == pytest.approx(norm, rel=1e-4)
  assert r.history[0]["grad_norm_median"] == r.history[0]["grad_norm_max"]


def test_without_validation_animals_the_latest_is_kept(tmp_path):
  data_dir = tmp_path / "data"
  phantom.write_phantom(data_dir, animals=3, seed=0, size=48)  # 2 train, 0 val, 1 test
  config = configs.override(configs.get_config("smoke"), animals=3, image_size=48,
                            epochs=2, learning_rate=0.5)
  r = tissue.train_and_evaluate(config, tmp_path / "run", data_dir=data_dir)
  assert r.split["val"] == [] and [h["step"] for h in r.history] == [20, 40]
  summary = tissue.training_summary(r.history, config)
  assert (summary["kept"], summary["best_epoch"]) == ("latest", 2)
  assert summary["best_val_mean_tissue_dice"] is None
  meta = checkpoint.read_meta(r.checkpoint_dir, "best")
  assert (meta["epoch"], meta["kept"], meta["kept_epoch"]) == (1, "latest", 1)
  latest = checkpoint.load_model(r.checkpoint_dir, which="latest").params
  _leaves_equal(checkpoint.load_model(r.checkpoint_dir).params, latest)
  _leaves_equal(r.params, latest)


def test_a_planted_exploding_step_stops_training(phantom_dir, tmp_path, monkeypatch):
  # The 41st update (epoch 2: 30 steps per epoch) sees an infinite image.
  planted = 40
  step = tissue.train_step

  def exploding(state, batch, **kw):
    scale = jnp.where(state.step == planted, jnp.inf, 1.0)
    return step(state, batch | {"image": batch["image"] * scale}, **kw)

  monkeypatch.setattr(tissue, "train_step", exploding)
  config = configs.override(configs.get_config("smoke"), epochs=3, augment=False)
  with pytest.raises(errors.TrainingError, match=r"non-finite loss at epoch 2, step 41"
                     r" \(config 'smoke'\): training stopped; lower the learning rate.*"
                     r"clip gradients.*earlier epochs in .*checkpoints are kept"):
    tissue.train_and_evaluate(config, tmp_path, data_dir=phantom_dir)
  meta = checkpoint.read_meta(tmp_path / "checkpoints", "latest")
  assert meta["epoch"] == 0 and np.isfinite(meta["history"][0]["loss"])
  on_disk = [d.name for d in (tmp_path / "checkpoints" / checkpoint.EPOCHS_DIR).iterdir()]
  assert on_disk == ["0"]  # epoch 2 (index 1) was neither validated nor saved
  assert meta["history"][0]["grad_norm_max"] > 0
