"""The driver keys of an abcrown profile, and the YAML config written for the tool."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from usnprune.config import require
from usnprune.errors import UsnpruneError

ENV_HOME = "USNPRUNE_ABCROWN_HOME"
ENV_PYTHON = "USNPRUNE_ABCROWN_PYTHON"
ENTRY = Path("complete_verifier") / "abcrown.py"
SETTINGS_HINT = (f"set the profile key 'home' (or {ENV_HOME}) to the alpha-beta-CROWN checkout and "
                 f"'python' (or {ENV_PYTHON}) to the Python of its environment")

# abcrown_config keys the driver owns: where files are, and the time limit per instance.
DRIVER_OWNED = {
    ("general", "csv_name"): "the driver writes the instances file of each chunk",
    ("general", "root_path"): "the driver runs on a scratch copy of the benchmark",
    ("general", "results_file"): "the driver reads the results file from its scratch folder",
    ("model", "onnx_path"): "the driver passes each instance's ONNX file",
    ("specification", "vnnlib_path"): "the driver passes each instance's VNNLIB file",
    ("attack", "cex_path"): "the driver reads counterexamples from its scratch folder",
    ("data", "start"): "the driver chooses the instances of each process",
    ("data", "end"): "the driver chooses the instances of each process",
    ("data", "select_instance"): "the driver chooses the instances of each process",
    ("bab", "timeout"): "the time limit comes from each instance's timeout (instances.csv or --timeout)",
    ("bab", "override_timeout"): "the time limit comes from each instance's timeout (instances.csv or --timeout)",
    ("bab", "timeout_scale"): "the time limit comes from each instance's timeout (instances.csv or --timeout)",
}


# What abcrown.py imports at start, third-party modules first so a failure names the package.
PROBE_MODULES = ("torch", "torchvision", "onnx", "onnxruntime", "onnx2pytorch", "gurobipy", "auto_LiRPA",
                 "arguments", "beta_CROWN_solver", "lp_mip_solver", "attack", "loading", "read_vnnlib")


class AbcrownError(UsnpruneError):
    """alpha-beta-CROWN is not configured, or its installation cannot run."""



@dataclasses.dataclass
class AbcrownSettings:
    """The driver keys of an abcrown profile (see verifier_specs/profiles/abcrown.yaml)."""

    home: str | None = None  # the alpha-beta-CROWN checkout (else $USNPRUNE_ABCROWN_HOME)
    python: str | None = None  # the Python of its environment (else $USNPRUNE_ABCROWN_PYTHON)
    abcrown_config: dict = dataclasses.field(default_factory=dict)  # -> the YAML config it reads
    batch: bool = True  # instances-file mode for chunks of more than one instance
    chunk_size: int = 50  # instances per executor chunk (one process each, in batch mode)
    hard_limit_slack: float = 15.0  # seconds beyond an instance's timeout before the kill
    startup_slack: float = 10.0  # extra seconds for the first instance of each process
    accept_late: bool = False  # keep a certified/falsified answer given after the timeout
    omp_num_threads: int = 1  # OMP_NUM_THREADS of the tool, as its own scripts set it
    env: dict = dataclasses.field(default_factory=dict)  # extra environment variables
    extra_args: list[str] = dataclasses.field(default_factory=list)  # appended to its command line
    scratch_dir: str | None = None  # parent of the temporary working folders (default: system temp)
    keep_scratch: bool = False  # keep the working folders (debugging); their path is in the messages
    tail_lines: int = 40  # output lines kept in error messages
    profile_name: str = "abcrown"

    def check(self, where: str) -> None:
        require(self.chunk_size >= 1, f"{where}.chunk_size", f"must be >= 1, got {self.chunk_size}")
        require(self.hard_limit_slack >= 0, f"{where}.hard_limit_slack", f"must be >= 0 s, got {self.hard_limit_slack}")
        require(self.startup_slack >= 0, f"{where}.startup_slack", f"must be >= 0 s, got {self.startup_slack}")
        require(self.omp_num_threads >= 1, f"{where}.omp_num_threads", f"must be >= 1, got {self.omp_num_threads}")
        require(self.tail_lines >= 1, f"{where}.tail_lines", f"must be >= 1, got {self.tail_lines}")
        for section, value in self.abcrown_config.items():
            require(isinstance(value, dict), f"{where}.abcrown_config.{section}",
                    f"must be a mapping of alpha-beta-CROWN options, got {value!r}")
        for (section, key), why in DRIVER_OWNED.items():
            require(key not in (self.abcrown_config.get(section) or {}), f"{where}.abcrown_config.{section}.{key}",
                    f"is set by the driver ({why}); remove it from the profile")
        for k, v in self.env.items():
            require(isinstance(v, (str, int, float)), f"{where}.env.{k}", f"must be a string, got {v!r}")


def _set_dotted(mapping: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = mapping
    for k in keys[:-1]:
        nxt = cur.get(k)
        if not isinstance(nxt, dict):
            nxt = cur[k] = {}
        cur = nxt
    cur[keys[-1]] = value


def build_config(settings: AbcrownSettings) -> dict:
    """The mapping written as the tool's YAML config: the profile's ``abcrown_config`` plus
    what counterexample recovery needs (the adversarial example saved and printed)."""
    cfg = json.loads(json.dumps(settings.abcrown_config))  # a deep, plain copy
    general = cfg.setdefault("general", {})
    general["save_adv_example"] = True
    general["show_adv_example"] = True  # printed per instance: proves whose cex the file holds
    return cfg


def config_text(settings: AbcrownSettings) -> str:
    return ("# written by usnprune from the profile's abcrown_config (docs/abcrown.md)\n"
            + yaml.safe_dump(build_config(settings), sort_keys=False))
