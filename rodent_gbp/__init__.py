"""rodent_gbp: Guided Backpropagation background removal for rodent brain MRI.

A U-Net segments coronal slices into background / white matter / gray matter /
CSF; Guided Backpropagation shows where it looks; that gradient image, enhanced
(log-normal hypothesis, Eq. 1) and cross-correlated with a template mask, places
a brain mask that removes background artifacts before segmenting again.

Modules, one per stage of the data flow:
``phantom`` (synthetic data), ``data`` (NIfTI loading, splits, batches),
``model`` (U-Net), ``train`` (Dice loss, SGD-momentum step), ``guided``
(guided ReLU, saliency), ``enhance`` (Eq. 1), ``correlate`` (FFT correlation,
localisation), ``metrics`` (confusion counts), ``pipeline`` (where the stages meet).
"""

__version__ = "0.1.0"
