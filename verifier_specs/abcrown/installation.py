"""Where alpha-beta-CROWN is and whether it can run: the user's checkout and the Python
of its own environment (profile keys, ``--option``, or environment variables), an import
probe of that Python, its version, its command line and environment."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from usnprune.process import run_limited

from .settings import ENTRY, ENV_HOME, ENV_PYTHON, PROBE_MODULES, SETTINGS_HINT, AbcrownError, AbcrownSettings


# Run inside the verifier's Python when torchvision fails: which torch, and whether
# torchvision's compiled extension links CUDA libraries that torch does not have.
_TORCH_BUILD = (
    "def _torch_build():\n"
    "    out = {}\n"
    "    try:\n"
    "        import torch\n"
    "        out['torch'] = torch.__version__\n"
    "        out['torch_cuda'] = torch.version.cuda\n"
    "    except BaseException:\n"
    "        pass\n"
    "    try:\n"
    "        import glob, importlib.metadata, importlib.util, os\n"
    "        out['torchvision'] = importlib.metadata.version('torchvision')\n"
    "        spec = importlib.util.find_spec('torchvision')\n"
    "        libs = glob.glob(os.path.join(os.path.dirname(spec.origin), '_C*.so'))\n"
    "        out['tv_links_cuda'] = bool(libs) and any(b'libtorch_cuda' in open(p, 'rb').read() for p in libs)\n"
    "    except BaseException:\n"
    "        pass\n"
    "    return out\n"
)


def _torchvision_cause(build: dict) -> str:
    """The known cause of ``operator torchvision::nms does not exist``, in the user's terms."""
    torch_v, tv = build.get("torch", "?"), build.get("torchvision", "?")
    if build.get("tv_links_cuda") and build.get("torch_cuda") is None and "torch" in build:
        what = (f"a CUDA-linked torchvision {tv} next to the CPU torch {torch_v}: torchvision's compiled "
                "extension needs libtorch_cuda, which a CPU torch does not ship, so its operators are never "
                "defined")
    else:
        what = (f"torchvision {tv}'s compiled extension did not load into torch {torch_v} -- typically a "
                "CUDA-linked torchvision next to a CPU torch, or a torchvision built for another torch")
    return (f"{what}; an environment problem of the alpha-beta-CROWN installation: it needs a torchvision "
            "built for exactly its torch (every torchvision wheel on PyPI for Linux x86_64 is CUDA-linked, so "
            "next to a CPU torch use a matching CUDA torch/torchvision pair or a CPU torchvision build; "
            "docs/abcrown.md)")


class Installation:
    """Mixed into the backend: everything about the user's installation (``self.settings``)."""

    settings: AbcrownSettings
    _probes: dict[tuple[str, str, str], str | None] = {}  # (home, python, env) -> problem or None, per process

    @property
    def default_chunk_size(self) -> int:
        return self.settings.chunk_size

    def locate(self) -> tuple[Path, str]:
        """(home, python) from the settings or the environment; raises AbcrownError naming both."""
        home = self.settings.home or os.environ.get(ENV_HOME)
        python = self.settings.python or os.environ.get(ENV_PYTHON)
        if not home or not python:
            missing = " and ".join(n for n, v in (("home", home), ("python", python)) if not v)
            raise AbcrownError(f"alpha-beta-CROWN is not configured ({missing} not set): {SETTINGS_HINT}")
        home_p = Path(home).expanduser()
        if not (home_p / ENTRY).is_file():
            raise AbcrownError(f"alpha-beta-CROWN home {home_p} has no {ENTRY}: {SETTINGS_HINT}")
        py = os.path.expanduser(python)
        resolved = shutil.which(py) if os.sep not in py else py
        if not resolved or not os.path.isfile(resolved) or not os.access(resolved, os.X_OK):
            raise AbcrownError(f"alpha-beta-CROWN python {python} is not an executable file: {SETTINGS_HINT}")
        return home_p.resolve(), resolved

    def check_available(self) -> None:
        """The checkout and the Python exist, and that Python imports what the tool imports
        at start (``PROBE_MODULES``); checked once per process and installation."""
        home, python = self.locate()
        key = (str(home), python, json.dumps(self.settings.env, sort_keys=True, default=str))
        if key not in self._probes:
            self._probes[key] = self._probe(home, python)
        if self._probes[key]:
            raise AbcrownError(self._probes[key])

    def _probe(self, home: Path, python: str) -> str | None:
        code = (
            "import importlib, json, sys\n"
            "sys.path.insert(0, '.')\n"
            + _TORCH_BUILD +
            f"for name in {PROBE_MODULES!r}:\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except BaseException as e:\n"
            "        print('USNPRUNE-PROBE ' + json.dumps([name, type(e).__name__ + ': ' + str(e).splitlines()[0] if str(e) else type(e).__name__, _torch_build() if name == 'torchvision' else None]))\n"
            "        sys.exit(0)\n"
            "print('USNPRUNE-PROBE ' + json.dumps(None))\n"
        )
        env = self._env()
        try:
            r = run_limited([python, "-c", code], 300, cwd=home / "complete_verifier", env=env)
        except OSError as e:
            return f"alpha-beta-CROWN python {python} cannot be started ({e.strerror or e}): {SETTINGS_HINT}"
        if r.killed:
            return f"alpha-beta-CROWN python {python} did not finish importing torch within 300 s: {SETTINGS_HINT}"
        found = [ln for ln in r.stdout.splitlines() if ln.startswith("USNPRUNE-PROBE ")]
        if not found:
            last = (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or ["no output"])[-1]
            return (f"alpha-beta-CROWN python {python} is not a working Python (exit code {r.returncode}: {last}): "
                    f"{SETTINGS_HINT}")
        failure = json.loads(found[-1][len("USNPRUNE-PROBE "):])
        if failure is None:
            return None
        module, error = failure[:2]
        build = failure[2] if len(failure) > 2 else None
        what = module if module in PROBE_MODULES[:7] else f"alpha-beta-CROWN's module {module}"
        hint = ""
        if "torchvision::" in error:
            hint = " (" + _torchvision_cause(build or {}) + ")"
        return (f"alpha-beta-CROWN python {python} cannot import {what}: {error}{hint} -- an environment problem of "
                f"the verifier installation at home={home}; {SETTINGS_HINT}")

    def version(self) -> str:
        if getattr(self, "_version", None) is None:
            self._version = self._describe()
        return self._version

    def _describe(self) -> str:
        try:
            home, _ = self.locate()
        except AbcrownError:
            return "alpha-beta-CROWN"
        parts = []
        init = home / "complete_verifier" / "__init__.py"
        try:
            m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", init.read_text())
            if m:
                parts.append(m[1])
        except OSError:
            pass
        try:
            r = run_limited(["git", "-C", str(home), "describe", "--always", "--tags", "--dirty"], 20)
            if r.returncode == 0 and r.stdout.strip():
                parts.append(r.stdout.strip())
        except OSError:
            pass
        return "alpha-beta-CROWN" + (f" {' '.join(parts)}" if parts else "")

    # -- command lines

    def command(self, config: Path, results: Path, cex: Path, *, csv_name: str | None = None,
                root: Path | None = None, onnx: str | None = None, vnnlib: str | None = None,
                timeout: float | None = None) -> list[str]:
        """The tool's command line, in instances-file mode (``csv_name`` + ``root``) or for
        one instance (``onnx`` + ``vnnlib`` + ``timeout``)."""
        home, python = self.locate()
        cmd = [python, str(home / ENTRY), "--config", str(config)]
        if csv_name is not None:
            if root is None:
                raise ValueError("instances-file mode needs the root folder")
            cmd += ["--csv_name", csv_name, "--root_path", str(root)]
        else:
            if onnx is None or vnnlib is None or timeout is None:
                raise ValueError("single-instance mode needs onnx, vnnlib and timeout")
            cmd += ["--onnx_path", onnx, "--vnnlib_path", vnnlib, "--timeout", repr(float(timeout))]
        cmd += ["--results_file", str(results), "--cex_path", str(cex)]
        return cmd + list(self.settings.extra_args)

    def _env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}  # its own environment
        env["OMP_NUM_THREADS"] = str(self.settings.omp_num_threads)
        env["PYTHONUNBUFFERED"] = "1"  # result lines must arrive as they are printed
        env.update({str(k): str(v) for k, v in self.settings.env.items()})
        return env

    # -- verifying
