"""The tissue classes: one list of label values and names for the whole project.

A label map holds 0 background (not brain), 1 white matter, 2 gray matter,
3 CSF (the paper's four classes). Every module that names a class takes the
name from here: ``NAMES[value]`` in results and reports, ``TITLES[value]`` in
figures, ``SHORT[value]`` in the phantom's records, ``PAPER_TITLES`` for the
rows of the paper's tables.
"""

NAMES = ("background", "wm", "gm", "csf")
#: The scored classes (background left out): value -> name.
TISSUE = {value: name for value, name in enumerate(NAMES) if value}
#: name -> value.
VALUES = {name: value for value, name in enumerate(NAMES)}
SHORT = ("background", "WM", "GM", "CSF")
TITLES = ("Background", "White matter", "Gray matter", "CSF")
#: The paper's names for the rows of its Tables 1 and 2.
PAPER_TITLES = {"brain": "Brain segmentation", "wm": "White Matter", "gm": "Gray Matter",
                "csf": "Cerebrospinal Liquid"}
