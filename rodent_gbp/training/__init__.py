"""Training code: nothing here is needed to segment a scan with a model folder.

``trainer`` (the one epoch loop: mesh, Orbax checkpoints, resume, time cap,
non-finite stop, progress) runs a task: ``tissue`` (the paper's U-Net on
skull-stripped slices against tissue labels) or ``extraction`` (the brain
extractor on raw slices against brain masks). ``optim`` (optax optimisers and
the non-finite check), ``losses`` (soft Dice, cross-entropy, evaluation
counts), ``augment`` (on-device augmentation, one preset per task) and
``checkpoint`` (Orbax) serve them. ``rodent-gbp-segment`` and ``import
rodent_gbp`` import none of it (``tests/test_layout.py``).
"""
