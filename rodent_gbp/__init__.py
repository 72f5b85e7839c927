"""rodent_gbp: Guided Backpropagation background removal for rodent brain MRI.

A U-Net segments coronal slices into background / white matter / gray matter /
CSF; Guided Backpropagation shows where it looks; that gradient image, enhanced
(log-normal hypothesis, Eq. 1) and cross-correlated with a template mask, places
a brain mask that removes background artifacts before segmenting again. The
design, module by module: docs/design.md#module-map.

Core, one module per stage of the data flow (``pipeline`` is where they meet):

* data: ``sources`` (a public set, a folder or the phantom), ``phantom`` and
  ``phantom_anatomy`` (the synthetic phantom), ``nifti`` (the one NIfTI reader:
  validation, RAS+ reorientation, voxel sizes), ``data`` (folder layout, RAS+
  slices, normalisation, splits, batches), ``datasets`` (public real sets:
  registry, manifests, download, conversion, pseudo-labels), ``scan`` (a
  user's scan: geometry, resampling to the model grid);
* model and saliency: ``model`` (U-Net, activation a module field),
  ``guided`` (guided ReLU as a ``jax.custom_vjp``, saliency maps, the gradient
  image);
* localise and place: ``enhance`` (Eq. 1), ``correlate`` (FFT correlation,
  ``locate``, the zero-filled shift), ``bank`` (template bank, reference
  animal), ``candidates`` and ``search`` (the improved placement's search),
  ``refine`` (contour refinement), ``extractor`` (the supervised brain
  extractor's prediction), ``placement`` (every placer, one signature);
* remove and segment again: ``pipeline``;
* judge: ``metrics`` (confusion counts, Dice, HD95), ``evaluators`` (ceiling,
  oracle), ``evaluation`` (a test volume against its truth), ``improved``
  (the improved placement's ablation and selection), ``distributions``
  (maximum-likelihood fits of the log-normal verdict);
* the main job: ``job`` (``job.run``, what ``experiments/reproduce.py`` calls)
  writing through ``results``, ``report``, ``figures`` and ``qc``;
* a trained model: ``bundle`` (networks, normalisation, template bank, voxel
  size), ``models`` (the model folder installed with the package),
  ``inference`` and ``cli`` (``rodent-gbp-segment``, the binaries' error edge);
* around: ``configs`` (``paper``, ``default``, ``smoke``), ``parallel`` (one
  mesh for 1 or N devices and hosts), ``fileio`` (atomic files, strict JSON),
  ``errors``.

``rodent_gbp.training``: all training code (``trainer.fit``, the one epoch
loop, with the ``tissue`` and ``extraction`` tasks; ``optim``, ``losses``,
``augment``, ``checkpoint``, ``flags``); segmenting a scan imports none of it.
``rodent_gbp.studies``: the studies built on the core (``common`` holds what
several share); the core never imports them.

This module re-exports nothing, so ``import rodent_gbp`` loads no JAX, optax or
orbax.
"""

__version__ = "0.2.0"
