"""A throw-away single-node Slurm (with accounting) for the tests and the Slurm benchmark.

What it does, as root, on a Debian 12 machine (see /work/shared/SLURM.md for why each step):

1. installs Debian's ``slurmctld slurmd slurm-client munge slurmdbd mariadb-server`` when
   a binary is missing (``apt-get update && apt-get install -y ...``) -- only when asked:
   ``USNPRUNE_INSTALL_SLURM=1`` (``.ci/run`` sets it). Without it a machine without Slurm
   is left as it is and the Slurm tests are skipped with that reason;
2. creates a fresh state folder ``/tmp/usnprune-slurm-XXXX`` (fresh: ghost jobs and reused
   job ids from an earlier cluster cannot leak in) and four free TCP ports;
3. starts, each in the foreground as a child of this process so that its PID is known:
   ``munged`` (as the munge user, on a private socket), ``mariadbd`` (private data folder,
   127.0.0.1 only), ``slurmdbd``, registers the cluster with ``sacctmgr``, ``slurmctld`` and
   ``slurmd`` -- all configured from ``slurm.conf.in`` / ``slurmdbd.conf.in`` next to this
   file; nothing in /etc is read or changed (the munge key excepted, which is only read);
4. waits until ``sinfo`` reports the node idle.

``stop()`` cancels every job, waits for an empty queue, then stops the daemons it started
by their PIDs (checking ``/proc/PID/comm`` first) in the order slurmd, slurmctld, slurmdbd,
mariadbd, munged, and removes the state folder.

Clients find the cluster through ``SLURM_CONF`` (``Cluster.env``). Use from a shell::

    python tests/driver/slurm/cluster.py up     # prints "export SLURM_CONF=..." and waits; Ctrl-C stops it
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server"]
BINARIES = ["slurmctld", "slurmd", "slurmdbd", "sbatch", "sinfo", "squeue", "scancel", "sacct", "sacctmgr", "srun",
            "munged", "munge", "unmunge", "mariadbd", "mariadb-install-db"]
CLUSTER = "usnprunetest"
INSTALL_ENV = "USNPRUNE_INSTALL_SLURM"  # =1: the tests may apt-get install Slurm (as root)
SBIN = ("/usr/sbin", "/sbin")


class Unavailable(Exception):
    """This machine cannot run the test cluster (the tests are skipped with this reason)."""


def _which(name: str) -> str | None:
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(SBIN)
    return shutil.which(name, path=path)


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if _which(b) is None]


def ensure_packages(log: Callable[[str], None] = print, timeout: float = 600) -> float:
    """Install the Debian packages when a binary is missing; returns the seconds it took.
    Raises :class:`Unavailable` when it cannot (not root, no apt-get, apt fails)."""
    missing = missing_binaries()
    if not missing:
        return 0.0
    if os.environ.get(INSTALL_ENV) != "1":
        raise Unavailable(f"Slurm is not installed ({', '.join(missing)} missing); set {INSTALL_ENV}=1 to let the "
                          f"tests install {' '.join(PACKAGES)} with apt-get (as root), as .ci/run does")
    if os.geteuid() != 0:
        raise Unavailable(f"Slurm is not installed ({', '.join(missing)} missing) and installing it needs root")
    if shutil.which("apt-get") is None:
        raise Unavailable(f"Slurm is not installed ({', '.join(missing)} missing) and there is no apt-get")
    t0 = time.perf_counter()
    log(f"installing {' '.join(PACKAGES)} (missing: {', '.join(missing)})")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        try:
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Unavailable(f"{' '.join(cmd[:2])} did not finish within {timeout:.0f} s") from None
        if p.returncode != 0:
            tail = (p.stderr.strip() or p.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise Unavailable(f"{' '.join(cmd[:2])} failed (exit {p.returncode}): {tail[0]}")
    still = missing_binaries()
    if still:
        raise Unavailable(f"installed {' '.join(PACKAGES)} but {', '.join(still)} are still missing")
    return time.perf_counter() - t0


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _mem_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(int(line.split()[1]) / 1024 * 0.8)
    return 1024


class Cluster:
    # daemon name -> expected /proc/PID/comm (comm is cut at 15 characters)
    STOP_ORDER = ["slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"]

    def __init__(self, log: Callable[[str], None] = print) -> None:
        self.log = log
        self.procs: dict[str, subprocess.Popen] = {}
        self.state: Path | None = None
        self.env: dict[str, str] = {}
        self.timings: dict[str, float] = {}

    # ---- start ----------------------------------------------------------------------

    def start(self, timeout: float = 120) -> "Cluster":
        if os.geteuid() != 0:
            raise Unavailable("starting the test Slurm needs root (slurmd, munged as the munge user)")
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout
        self.state = Path(tempfile.mkdtemp(prefix="usnprune-slurm-"))
        self.state.chmod(0o755)  # munged (the munge user) must reach its socket folder
        for d in ("ctld", "spool", "log", "mysql", "munge"):
            (self.state / d).mkdir()
        munge_user = pwd.getpwnam("munge")
        os.chown(self.state / "munge", munge_user.pw_uid, munge_user.pw_gid)
        (self.state / "munge").chmod(0o700)
        ctld, slurmd, dbd, mysql = _free_ports(4)
        host = socket.gethostname().split(".")[0]
        fields = {"STATE": str(self.state), "CLUSTER": CLUSTER, "HOST": host, "CTLD_PORT": ctld, "SLURMD_PORT": slurmd,
                  "DBD_PORT": dbd, "MYSQL_PORT": mysql, "MUNGE_SOCKET": str(self.state / "munge" / "munge.socket"),
                  "CPUS": os.cpu_count() or 1, "MEM_MB": _mem_mb()}
        for name in ("slurm.conf", "slurmdbd.conf"):
            text = (HERE / f"{name}.in").read_text()
            for k, v in fields.items():
                text = text.replace(f"@{k}@", str(v))
            (self.state / name).write_text(text)
        (self.state / "slurmdbd.conf").chmod(0o600)  # slurmdbd refuses a readable one
        self.env = dict(os.environ, SLURM_CONF=str(self.state / "slurm.conf"))
        self.env["PATH"] = self.env.get("PATH", "") + os.pathsep + os.pathsep.join(SBIN)
        sock = fields["MUNGE_SOCKET"]
        try:
            self._spawn("munged", [_which("munged"), "-F", "--force", f"--socket={sock}",
                                   f"--pid-file={self.state}/munge/munged.pid", f"--log-file={self.state}/munge/munged.log",
                                   f"--seed-file={self.state}/munge/munged.seed"], user="munge")
            self._wait("munge", deadline, lambda: self._ok(f"{_which('munge')} -n --socket={sock} | "
                                                         f"{_which('unmunge')} --socket={sock}", shell=True))
            self._step("mariadb-install-db", [_which("mariadb-install-db"), "--no-defaults", f"--datadir={self.state}/mysql",
                                              "--user=root", "--auth-root-authentication-method=normal", "--skip-test-db"],
                       deadline)
            self._spawn("mariadbd", [_which("mariadbd"), "--no-defaults", f"--datadir={self.state}/mysql", "--user=root",
                                     f"--socket={self.state}/mysql.sock", f"--port={mysql}", "--bind-address=127.0.0.1",
                                     f"--pid-file={self.state}/mariadbd.pid", f"--log-error={self.state}/log/mariadbd.log",
                                     "--skip-grant-tables", "--innodb-buffer-pool-size=32M", "--skip-log-bin"])
            self._wait("mariadbd", deadline, lambda: _port_open(mysql))
            self._spawn("slurmdbd", [_which("slurmdbd"), "-D"])
            self._wait("slurmdbd", deadline, lambda: self._ok([_which("sacctmgr"), "-i", "add", "cluster", CLUSTER])
                       or self._ok([_which("sacctmgr"), "-n", "show", "cluster", CLUSTER], expect=CLUSTER))
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i"])
            self._wait("slurmctld", deadline, lambda: self._ok([_which("scontrol"), "ping"], expect="UP"))
            self._spawn("slurmd", [_which("slurmd"), "-D"])
            self._wait("slurmd (node idle)", deadline,
                       lambda: self._ok([_which("sinfo"), "-h", "-o", "%T"], expect="idle", exact=True))
        except BaseException:
            self.stop(keep_state=True)
            raise
        self.timings["start"] = time.perf_counter() - t0
        self.log(f"test Slurm up in {self.timings['start']:.1f} s (SLURM_CONF={self.env['SLURM_CONF']})")
        return self

    def _spawn(self, name: str, cmd: list[str], user: str | None = None) -> None:
        out = open(self.state / "log" / f"{name}.stdout", "ab")
        self.procs[name] = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True, user=user, cwd=self.state)
        out.close()

    def _step(self, name: str, cmd: list[str], deadline: float) -> None:
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=self.env, capture_output=True, text=True, cwd=self.state,
                           timeout=max(1.0, deadline - time.monotonic()))
        if p.returncode != 0:
            raise RuntimeError(f"{name} failed (exit {p.returncode}): {(p.stderr or p.stdout).strip()[-500:]}")
        self.timings[name] = time.perf_counter() - t0

    def _ok(self, cmd, shell: bool = False, expect: str | None = None, exact: bool = False) -> bool:
        try:
            p = subprocess.run(cmd, env=self.env, shell=shell, capture_output=True, text=True, timeout=15)
        except subprocess.TimeoutExpired:
            return False
        if p.returncode != 0:
            return False
        if expect is None:
            return True
        out = p.stdout.split()
        return (out == [expect]) if exact else expect in p.stdout

    def _wait(self, what: str, deadline: float, ready: Callable[[], bool]) -> None:
        t0 = time.perf_counter()
        while not ready():
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode} while waiting for {what}: "
                                       f"{self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}: {self.log_tail(what.split()[0])}")
            time.sleep(0.25)
        self.timings[what] = time.perf_counter() - t0

    def log_tail(self, name: str, n: int = 5) -> str:
        lines = []
        for f in (self.state / "log" / f"{name}.log", self.state / "log" / f"{name}.stdout",
                  self.state / "munge" / f"{name}.log"):
            if f.is_file():
                lines += f.read_text(errors="replace").strip().splitlines()[-n:]
        return " | ".join(lines[-n:]) or "no log"

    # ---- stop -----------------------------------------------------------------------

    def cancel_all(self, timeout: float = 60) -> None:
        """Cancel every job and wait for an empty queue (stopping slurmd while a job
        launches leaves ghost jobs behind)."""
        if "slurmctld" not in self.procs or self.procs["slurmctld"].poll() is not None:
            return
        squeue = [_which("squeue"), "-h", "-o", "%A"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ids = subprocess.run(squeue, env=self.env, capture_output=True, text=True, timeout=15).stdout.split()
            except subprocess.TimeoutExpired:
                ids = ["?"]
            if not ids:
                return
            ids = [i for i in ids if i != "?"]
            if ids:
                subprocess.run([_which("scancel"), "--quiet", *sorted(set(ids))], env=self.env, capture_output=True,
                               timeout=15)
            time.sleep(0.5)
        self.log(f"warning: the test Slurm queue is not empty after {timeout:.0f} s; stopping anyway")

    def stop(self, keep_state: bool = False) -> None:
        t0 = time.perf_counter()
        try:
            self.cancel_all()
        finally:
            for name in self.STOP_ORDER:
                p = self.procs.pop(name, None)
                if p is not None:
                    _stop_pid(p, name)
        self.timings["stop"] = time.perf_counter() - t0
        if self.state is not None and not keep_state and os.environ.get("USNPRUNE_SLURM_KEEP") != "1":
            shutil.rmtree(self.state, ignore_errors=True)  # our own mkdtemp folder, never a user path
        elif self.state is not None:
            self.log(f"test Slurm state and daemon logs kept in {self.state}")


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _stop_pid(p: subprocess.Popen, name: str, timeout: float = 15) -> None:
    """SIGTERM the daemon we started (after checking that the PID is still that daemon),
    then SIGKILL if it does not go."""
    if p.poll() is not None:
        return
    comm = _comm(p.pid)
    if comm is None or not name.startswith(comm):  # comm is at most 15 characters
        return  # the PID is no longer (or not yet) our daemon
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        if _comm(p.pid) and name.startswith(_comm(p.pid) or "?"):
            p.kill()
        p.wait(5)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def main(argv: list[str]) -> int:
    if argv[1:] != ["up"]:
        print(__doc__)
        return 2
    try:
        ensure_packages()
        c = Cluster().start()
    except Unavailable as e:
        print(f"cannot start the test Slurm: {e}", file=sys.stderr)
        return 1
    print(f"export SLURM_CONF={c.env['SLURM_CONF']}", flush=True)
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):  # a background job of a script ignores SIGINT by default
        signal.signal(sig, lambda *_: stop.append(1))
    try:
        while not stop:
            signal.pause()
    finally:
        c.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
