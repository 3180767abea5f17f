"""alpha-beta-CROWN, the external verifier, run as a subprocess in its own environment.

usnprune never imports alpha-beta-CROWN and never installs it: the user points at a
checkout (``home``) and the Python of its environment (``python``) through the profile,
``--option``, or ``USNPRUNE_ABCROWN_HOME`` / ``USNPRUNE_ABCROWN_PYTHON`` (docs/abcrown.md).

How a chunk of instances is run (the facts behind each choice are in docs/abcrown.md):

* The profile's ``abcrown_config`` mapping becomes the YAML file the tool reads; the driver
  adds only what it must own (files, time limits, counterexample saving).
* Every run works on a scratch copy of the ONNX and VNNLIB files in a fresh temporary
  folder, which is also the working directory: the tool writes ``<vnnlib>.compiled`` beside
  every property and ``out.txt`` / ``test_cex.txt`` into its cwd, and cannot read
  ``.vnnlib.gz`` (decompressed into the copy).
* Instances-file mode (``--csv_name`` + ``--root_path``) for chunks of more than one
  instance, so start-up (~6 s) is paid once per process. ``Result: <status> in <t> seconds``
  lines are parsed as they stream and each instance is reported at once.
* Its counterexample file keeps only the last ``sat``, so it is read (and removed) the
  moment an ``unsafe-*`` result line appears, and accepted only when it matches the
  adversarial example the tool printed for that very instance (and, where the project's
  replay is importable, when it replays). Otherwise that instance is verified again alone
  in single-instance mode, whose results file carries its own counterexample.
* A hard wall-clock limit per instance (the tool's own timeout excludes start-up and does
  not interrupt the sub-box batch in progress): the tool runs in its own session and
  process group, which is killed with ``os.killpg`` on overrun, never by name; a new
  process continues with the remaining instances. On Linux the tool also gets SIGKILL
  when the worker that started it dies (so an executor killing a worker takes it along).
"""

from .backend import BACKEND, AbcrownBackend
from .installation import Installation
from .scratch import _Scratch, _Staged
from .settings import (
                       DRIVER_OWNED,
                       ENTRY,
                       ENV_HOME,
                       ENV_PYTHON,
                       PROBE_MODULES,
                       SETTINGS_HINT,
                       AbcrownError,
                       AbcrownSettings,
                       build_config,
                       config_text,
)
from .transcript import (
                       CERTIFIED,
                       InstanceOutput,
                       TranscriptParser,
                       classify,
                       load_results_pickle,
                       parse_counterexample,
                       parse_results_file,
                       parse_transcript,
)

__all__ = ["BACKEND", "CERTIFIED", "DRIVER_OWNED", "ENTRY", "ENV_HOME", "ENV_PYTHON", "PROBE_MODULES", "SETTINGS_HINT",
           "AbcrownBackend", "AbcrownError", "AbcrownSettings", "InstanceOutput", "Installation", "TranscriptParser",
           "_Scratch", "_Staged", "build_config", "classify", "config_text", "load_results_pickle",
           "parse_counterexample", "parse_results_file", "parse_transcript"]
