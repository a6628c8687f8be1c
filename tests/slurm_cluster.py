"""A real two-node Slurm cluster on this machine, for tests: its own munged, slurmctld and two slurmd.

Debian's slurm-wlm allows several slurmd on one host: nodes n1 and n2 (one CPU each) share this machine's
address, each slurmd with its own port and spool folder. Everything lives in a temporary folder: the config,
the state, the logs, a munge key and munged's socket (the machine's own munged, if any, is left alone).
``LocalSlurm.stop()`` ends exactly the daemons ``start()`` started (their Popen handles), after cancelling
the cluster's jobs.

    python tests/slurm_cluster.py DIR     # start one and keep it up until Ctrl-C (SLURM_CONF is printed)

Partitions: ``debug`` (default: n1, n2) and ``one`` (n1 only: a 2-node job there waits with PartitionConfig).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
NEEDED = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo", "munged", "mungekey")


class Unavailable(RuntimeError):
    """Slurm cannot run here (the packages cannot be installed, or not root); the message says why."""


def ensure_installed() -> None:
    """Install slurm-wlm and munge with apt when a command is missing."""
    missing = [c for c in NEEDED if shutil.which(c) is None and not Path("/usr/sbin", c).exists()]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise Unavailable(f"{', '.join(missing)} missing and apt-get cannot install {' '.join(PACKAGES)} here "
                          f"({'not root' if os.geteuid() != 0 else 'no apt-get'})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    r = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES], env=env,
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:  # the package lists may be missing: refresh once
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
        r = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES], env=env,
                           capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise Unavailable(f"apt-get install {' '.join(PACKAGES)} failed: {(r.stderr or r.stdout)[-400:]}")


def _exe(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


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


CONFIG = """ClusterName=prefpilot-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/slurmd-%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_min_interval=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
MinJobAge=3600
NodeName=n1 NodeHostname={host} NodeAddr=127.0.0.1 Port={n1_port} CPUs=1 RealMemory=2000 State=UNKNOWN
NodeName=n2 NodeHostname={host} NodeAddr=127.0.0.1 Port={n2_port} CPUs=1 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
PartitionName=one Nodes=n1 MaxTime=INFINITE State=UP
"""


class LocalSlurm:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    # ------------------------------------------------------------------ start / stop
    def start(self, timeout: float = 90) -> "LocalSlurm":
        ensure_installed()
        if os.geteuid() != 0:
            raise Unavailable("the test cluster runs slurmd as root (SlurmdUser=root); not root here")
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "state").mkdir(exist_ok=True)
        keydir, sockdir = self.root / "munge-key", self.root / "munge-sock"
        keydir.mkdir(mode=0o700, exist_ok=True)
        sockdir.mkdir(mode=0o755, exist_ok=True)
        os.chmod(self.root, 0o755)  # munged wants its socket's folders reachable by all
        key, sock = keydir / "munge.key", sockdir / "munge.sock"
        if not key.exists():
            subprocess.run([_exe("mungekey"), "--create", "--keyfile", str(key), "--bits", "1024"], check=True,
                           capture_output=True)
        self._spawn("munged", [_exe("munged"), "--foreground", f"--socket={sock}", f"--key-file={key}",
                               f"--pid-file={keydir}/munged.pid", f"--log-file={keydir}/munged.log",
                               f"--seed-file={keydir}/munged.seed"])
        self._wait(lambda: sock.exists(), 20, "munged's socket")
        ctld, n1, n2 = _free_ports(3)
        self.conf.write_text(CONFIG.format(host=socket.gethostname(), ctld_port=ctld, n1_port=n1, n2_port=n2,
                                           sock=sock, root=self.root))
        self._spawn("slurmctld", [_exe("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        for node in ("n1", "n2"):
            self._spawn(f"slurmd-{node}", [_exe("slurmd"), "-D", "-N", node, "-f", str(self.conf)])
        self._wait(self._nodes_idle, timeout, "nodes n1 and n2 to be idle (see slurmctld.log)")

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env, start_new_session=True)
        log.close()

    def _wait(self, pred, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited at start; logs in {self.root}: "
                                   + self._tail(dead[0]))
            if pred():
                return
            time.sleep(0.3)
        raise RuntimeError(f"timed out waiting for {what}; logs in {self.root}")

    def _tail(self, name: str) -> str:
        for f in (self.root / f"{name}.out", self.root / f"{name}.log"):
            if f.is_file():
                return f.read_text(errors="replace")[-1500:]
        return ""

    def _nodes_idle(self) -> bool:
        r = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=self.env, capture_output=True, text=True)
        states = dict(line.split()[:2] for line in r.stdout.splitlines() if len(line.split()) >= 2)
        return r.returncode == 0 and all(states.get(n, "").startswith("idle") for n in ("n1", "n2"))

    def stop(self) -> None:
        """Cancel the cluster's jobs, then end the daemons this object started (and only those)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "--user=root"], env=self.env, capture_output=True, timeout=30)
            deadline = time.time() + 30
            while time.time() < deadline and self.squeue():
                time.sleep(0.5)
        for name in ("slurmd-n1", "slurmd-n2", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in self.procs.items():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        self.procs.clear()

    # ------------------------------------------------------------------ helpers for tests
    def squeue(self) -> list[str]:
        """Job ids the controller still lists as pending, running or completing."""
        r = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True, timeout=30)
        return r.stdout.split()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":  # pragma: no cover - by hand
    cluster = LocalSlurm(sys.argv[1] if len(sys.argv) > 1 else "/tmp/prefpilot-slurm")
    with cluster:
        print(f"export SLURM_CONF={cluster.conf}", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
