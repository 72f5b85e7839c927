"""Studies and reports built on the core library.

The main job's orchestration (``reproduce``), the paper-readings sweep
(``readings``), the placement study, the log-normal study, the saliency
figures (``explain``), tables (``report``) and figures. The core modules of
``rodent_gbp`` never import from here.
"""
