"""usnprune: prune keypoint networks with the USN metric and certify them against lighting changes.

The ground floor of the package: :mod:`usnprune.errors`, :mod:`usnprune.config`,
:mod:`usnprune.files` (atomic writes, paths kept inside an output folder),
:mod:`usnprune.system` (cores), :mod:`usnprune.process` (the one subprocess runner) and
:mod:`usnprune.bounds` (the sound bound engine). It imports no stage. The stages sit on it,
each importing only the ones below it::

    usnprune (ground floor) <- usnprune.pruner <- usnprune.export <- usnprune.verifier_specs <- usnprune.driver

The stage folders live at the repository root (``pruner/``, ``export/``, ...) and are
installed under this package by ``package_dir`` in setup.cfg.
"""

__version__ = "0.2.0"
