"""Writing files so that a reader never sees half of one, and only where a command may write.

Every file a stage hands to the next is written to a temporary sibling and renamed into
place (``os.replace`` is atomic on POSIX): a killed or failing writer leaves the old file or
none, never a truncated one that looks complete.

:class:`OutputFolder` is the one way a command writes its ``--out`` folder:

* every path it writes or deletes is resolved and checked to lie inside the folder
  (:func:`inside`), so no name (``../x``, a symlinked parent, an absolute path) escapes it;
* a file that exists is replaced only with ``--force``, and then only when the folder's
  manifest (``.usnprune-files.json``, written by usnprune next to what it wrote) lists it:
  a user's own file is never replaced or deleted, with or without ``--force``;
* no input of the command (a checkpoint, a dataset file) is ever a target;
* the outputs are written into a hidden staging folder inside ``--out`` and moved into place
  together at the end, the manifest last: a full disk or a kill while writing leaves the
  folder as it was (plus, after a kill, a hidden ``.usnprune-staging-<host>-<pid>-*``
  folder, removed by the next command that writes there once that process is gone).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

from usnprune.errors import UsnpruneError

MANIFEST = ".usnprune-files.json"  # the files usnprune wrote into a folder, by command
STAGING_PREFIX = ".usnprune-staging-"


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` on a temporary sibling of ``path``, then rename it into place."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


class PathError(UsnpruneError):
    """A path would lead outside the folder it must stay in, or over a file it must not touch."""


def safe_relative(rel: str, what: str = "path") -> str:
    """``rel`` normalised (``./a//b`` -> ``a/b``); refuses empty, absolute and ``..`` paths."""
    text = str(rel).strip().replace("\\", "/")
    if not text or "\x00" in text:
        raise PathError(f"{what} {rel!r}: empty")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise PathError(f"{what} {rel!r}: must be relative to its folder, not absolute")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise PathError(f"{what} {rel!r}: must name a file inside its folder (no '..')")
    return "/".join(parts)


def inside(root: str | Path, rel: str | Path, what: str = "path") -> Path:
    """``root / rel`` after checking that it resolves (symlinks followed) inside ``root``."""
    base = Path(root).resolve()
    target = (base / safe_relative(str(rel), what)).resolve()
    if target != base and base not in target.parents:
        raise PathError(f"{what} {rel}: resolves to {target}, outside {base}")
    return target


def hash_file(path: str | Path) -> str:
    """SHA-256 of a file's content (hex)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class OutputFolder:
    """The folder one command writes (see the module docstring).

    ``flag`` is what the user typed to name it (``--out``, ``out:`` of a YAML file), used in
    every message; ``inputs`` are files the command reads, never to be written over."""

    def __init__(self, root: str | Path, command: str, force: bool = False, flag: str = "--out",
                 inputs: Iterable[str | Path] = ()) -> None:
        self.root = Path(root)
        self.command = command
        self.force = force
        self.flag = flag
        if self.root.exists() and not self.root.is_dir():
            raise PathError(f"{flag} {self.root}: exists and is not a folder")
        self.inputs = {Path(p).resolve() for p in inputs if p}

    # ---- what usnprune wrote here -----------------------------------------------------

    def listed(self) -> dict[str, str]:
        """Files the manifest lists (relative path -> command), each entry checked to be a
        plain relative path inside the folder; entries that are not are ignored."""
        try:
            data = json.loads((self.root / MANIFEST).read_text())
        except (OSError, ValueError):
            return {}
        files = data.get("files") if isinstance(data, dict) else None
        out = {}
        for rel, cmd in (files.items() if isinstance(files, dict) else []):
            try:
                inside(self.root, rel)
                out[safe_relative(rel)] = str(cmd)
            except PathError:
                continue
        return out

    def target(self, rel: str) -> Path:
        return inside(self.root, rel, f"{self.flag} {self.root}:")

    def claim(self, rels: Iterable[str], listed: dict[str, str] | None = None) -> None:
        """Refuse, before any work, to write ``rels`` where that would replace a file
        without ``--force``, a file usnprune did not write, or an input."""
        listed = self.listed() if listed is None else listed
        for rel in rels:
            path = self.target(rel)
            if path in self.inputs:
                raise PathError(f"{self.flag} {self.root}: writing {rel} there would overwrite the input {path}; "
                                f"choose another {self.flag}")
            if path.is_dir():
                raise PathError(f"{self.flag} {self.root}: {rel} is a folder in the way; choose another {self.flag}")
            if not (path.exists() or path.is_symlink()):
                continue
            if not self.force:
                raise PathError(f"{self.flag} {self.root}: {rel} exists; pass --force to replace what usnprune "
                                f"wrote there, or choose another {self.flag}")
            if safe_relative(rel) not in listed:
                raise PathError(f"{self.flag} {self.root}: {rel} exists and usnprune did not write it (not in "
                                f"{MANIFEST}); it is not replaced even with --force: move it away or choose "
                                f"another {self.flag}")

    # ---- writing ------------------------------------------------------------------------

    @contextlib.contextmanager
    def staging(self, rels: Iterable[str] = (), remove_stale: bool = False) -> Iterator["Staging"]:
        """Stage the outputs; on a clean exit move them into place (see :class:`Staging`)."""
        rels = list(rels)
        self.claim(rels)
        if remove_stale and not self.force:
            ours = [r for r, c in self.listed().items() if c == self.command and (self.root / r).exists()]
            if ours:
                raise PathError(f"{self.flag} {self.root}: holds the output of an earlier {self.command} "
                                f"({ours[0]}, ...); pass --force to replace it, or choose another {self.flag}")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            _remove_dead_staging(self.root)
            tmp = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{_me()}-", dir=self.root))
        except OSError as e:
            raise PathError(f"{self.flag} {self.root}: cannot write there ({e.strerror or e})") from None
        stage = Staging(self, tmp)
        try:
            yield stage
            stage.commit(remove_stale)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # our own mkdtemp folder only


def _me() -> str:
    return f"{socket.gethostname().replace('-', '_')}-{os.getpid()}"


def _remove_dead_staging(root: Path) -> None:
    """Remove staging folders this host's killed commands left in ``root`` (named
    ``.usnprune-staging-<host>-<pid>-*``; only when that process is gone)."""
    host = socket.gethostname().replace("-", "_")
    for d in root.glob(f"{STAGING_PREFIX}{host}-*"):
        pid = d.name[len(STAGING_PREFIX) + len(host) + 1:].split("-", 1)[0]
        if not pid.isdigit() or not d.is_dir() or d.is_symlink():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)  # a hidden folder of ours whose writer is dead
        except OSError:
            pass


class Staging:
    """Files of one command being written: ``path(rel)`` is where to write ``rel``."""

    def __init__(self, folder: OutputFolder, tmp: Path) -> None:
        self.folder = folder
        self.tmp = tmp
        self.rels: dict[str, None] = {}  # in the order written

    def path(self, rel: str) -> Path:
        rel = safe_relative(rel)
        self.folder.target(rel)  # refuse names that would leave the folder
        self.rels[rel] = None
        p = self.tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def commit(self, remove_stale: bool) -> None:
        """Move every staged file into place, then the manifest; with ``remove_stale``,
        delete the files this command listed before and did not write again."""
        folder = self.folder
        listed = folder.listed()
        written = [r for r in self.rels if (self.tmp / r).is_file()]
        folder.claim(written, listed)  # again: the folder may have changed while we worked
        stale = [r for r, c in listed.items() if remove_stale and c == folder.command and r not in written]
        entries = {r: c for r, c in listed.items() if r not in stale}
        entries.update({r: folder.command for r in written})
        manifest = self.tmp / MANIFEST
        manifest.write_text(json.dumps({"tool": "usnprune", "files": dict(sorted(entries.items()))}, indent=1))
        for rel in stale:
            p = folder.target(rel)
            if p.is_file() or p.is_symlink():
                p.unlink()
        for rel in written:
            dst = folder.target(rel)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.tmp / rel, dst)
        os.replace(manifest, folder.root / MANIFEST)
