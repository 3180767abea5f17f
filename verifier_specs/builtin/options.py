"""The builtin verifier's tunables (the keys of ``profiles/builtin.yaml``).

Unknown keys and out-of-range values are rejected naming the key and the allowed range, as
for every usnprune configuration.
"""

from __future__ import annotations

import dataclasses

from usnprune.config import require

BRANCHING = ("widest", "gradient", "unstable")
RELU_LOWER = ("adaptive", "parallel", "zero")
MODES = ("auto", "always", "never")  # not on/off: YAML reads those as booleans


@dataclasses.dataclass
class BuiltinOptions:
    batch: int = 0
    branching: str = "unstable"
    relu_split: bool = True
    relu_split_ratio: float = 0.0
    backward_depth: int = -1
    ibp: bool = False
    relu_lower: str = "adaptive"
    refine: str = "auto"
    refine_neurons: int = 128
    alpha: str = "auto"
    alpha_iterations: int = 8
    alpha_child_iterations: int = 2
    alpha_store_kb: int = 16
    tune_max_cost: float = 3.0
    alpha_trial_max_s: float = 0.05
    alpha_lr: float = 0.25
    grid: int = 11
    random_samples: int = 64
    attack_after: int = 16
    pgd_starts: int = 4
    pgd_steps: int = 10
    pgd_restarts: int = 2
    pgd_restart_steps: int = 5
    pgd_share: float = 0.2
    box_candidates: int = 8
    max_replays: int = 4
    calibration_points: int = 16
    margin_rel: float = 1e-5
    margin_calibration: float = 100.0
    rigorous_float32: bool = False
    min_width: float = 1e-9
    max_boxes: int = 2_000_000
    memory_mb: int = 1024
    threads: int = 1
    profile_name: str = "builtin"

    def check(self, where: str = "builtin") -> None:
        require(0 <= self.batch <= 65536, f"{where}.batch", f"must be 0 (from memory_mb) or in [1, 65536], "
                                                               f"got {self.batch}")
        require(self.branching in BRANCHING, f"{where}.branching",
                f"must be one of {', '.join(BRANCHING)}, got {self.branching!r}")
        require(self.relu_lower in RELU_LOWER, f"{where}.relu_lower",
                f"must be one of {', '.join(RELU_LOWER)}, got {self.relu_lower!r}")
        require(self.backward_depth >= -1, f"{where}.backward_depth",
                f"must be -1 (back to the input) or >= 0, got {self.backward_depth}")
        require(1 <= self.grid <= 1001, f"{where}.grid", f"must be in [1, 1001], got {self.grid}")
        require(1.0 <= self.tune_max_cost <= 1000, f"{where}.tune_max_cost",
                f"must be in [1, 1000], got {self.tune_max_cost}")
        require(0 <= self.alpha_trial_max_s <= 3600, f"{where}.alpha_trial_max_s",
                f"must be in [0, 3600], got {self.alpha_trial_max_s}")
        require(0 < self.alpha_lr <= 10, f"{where}.alpha_lr", f"must be in (0, 10], got {self.alpha_lr}")
        for key in ("refine", "alpha"):
            require(getattr(self, key) in MODES, f"{where}.{key}",
                    f"must be one of {', '.join(MODES)}, got {getattr(self, key)!r}")
        require(1 <= self.refine_neurons <= 1 << 16, f"{where}.refine_neurons",
                f"must be in [1, 65536], got {self.refine_neurons}")
        for key in ("alpha_iterations", "alpha_child_iterations", "alpha_store_kb", "attack_after", "random_samples", "pgd_starts", "pgd_steps", "max_replays", "box_candidates", "pgd_restarts",
                    "pgd_restart_steps", "calibration_points"):
            v = getattr(self, key)
            require(0 <= v <= 100000, f"{where}.{key}", f"must be in [0, 100000], got {v}")
        require(self.max_replays >= 1, f"{where}.max_replays", f"must be >= 1, got {self.max_replays}")
        require(1e-12 <= self.margin_rel <= 1e-1, f"{where}.margin_rel",
                f"must be in [1e-12, 0.1], got {self.margin_rel}")
        require(0 <= self.margin_calibration <= 1e6, f"{where}.margin_calibration",
                f"must be in [0, 1e6], got {self.margin_calibration}")
        require(0 < self.min_width <= 1e-3, f"{where}.min_width", f"must be in (0, 1e-3], got {self.min_width}")
        require(self.max_boxes >= 1, f"{where}.max_boxes", f"must be >= 1, got {self.max_boxes}")
        require(16 <= self.memory_mb <= 1 << 20, f"{where}.memory_mb", f"must be in [16, 1048576], got {self.memory_mb}")
        require(0.0 <= self.pgd_share <= 1.0, f"{where}.pgd_share", f"must be in [0, 1], got {self.pgd_share}")
        require(0.0 <= self.relu_split_ratio <= 1e6, f"{where}.relu_split_ratio",
                f"must be in [0, 1e6], got {self.relu_split_ratio}")
        require(self.calibration_points >= 1, f"{where}.calibration_points",
                f"must be >= 1, got {self.calibration_points}")
        require(0 <= self.threads <= 256, f"{where}.threads", f"must be in [0, 256], got {self.threads}")

    @property
    def depth(self) -> int | None:
        return None if self.backward_depth < 0 else self.backward_depth
