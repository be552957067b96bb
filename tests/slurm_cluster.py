"""A throwaway single-node SLURM cluster on this machine, for tests: munged, slurmctld and slurmd.

Needs root and the Debian packages ``slurm-wlm`` and ``munge`` (installed with apt when missing); no
systemd.  Everything the daemons read or write lives in one private directory: their own munge key and
socket, slurm.conf (found through ``SLURM_CONF``), state, logs and pid files, and free TCP ports.  So a
SLURM or munge already configured on the machine is neither used nor disturbed, and ``stop()`` ends
exactly the daemons ``start()`` started, by the PIDs in their pid files.

The node declares fake GPUs (character devices standing in for ``/dev/nvidiaN``), so GPU requests are
really scheduled: a job asking ``--gpus=1`` gets one of them and ``CUDA_VISIBLE_DEVICES`` in its
environment, and ``scontrol show job -d`` names the device it was given.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
MUNGED = Path("/usr/sbin/munged")
SLURMCTLD = Path("/usr/sbin/slurmctld")
SLURMD = Path("/usr/sbin/slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "sinfo", "scancel", "srun", "sacct")


def _installed() -> bool:
    return all(p.exists() for p in (MUNGED, SLURMCTLD, SLURMD)) and all(map(shutil.which, CLIENTS))


def unavailable_reason(install_timeout: int = 300) -> str | None:
    """Why no cluster can be started here, or None once the packages are installed.

    Installs the packages with apt when they are missing (``apt-get update`` first: a fresh image has no
    package lists).  Only a machine where that is impossible gets a reason; a cluster that is installed but
    does not come up is a failure for the caller to report, not a reason to skip.
    """
    if os.geteuid() != 0:
        return "needs root (to install slurm-wlm and munge, and to run the daemons as root)"
    if _installed():
        return None
    if shutil.which("apt-get") is None:
        return "slurm-wlm and munge are missing and there is no apt-get to install them"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *PACKAGES]):
        try:
            proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=install_timeout)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(args)}` did not finish within {install_timeout} s"
        if proc.returncode != 0:
            return f"`{' '.join(args)}` failed ({proc.returncode}): {proc.stderr.strip()[-500:]}"
    return None if _installed() else f"apt installed {PACKAGES}, yet SLURM/munge programs are missing"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A daemon that exited but was not reaped by its parent is gone for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


class SlurmCluster:
    """One node named after this host, with ``partitions`` (the first is the default) and ``gpus`` fake
    GPUs of type ``gpu_type``.  Use ``start()`` / ``stop()``; ``env()`` is the environment in which SLURM
    commands (and Snakemake's SLURM executor) talk to this cluster."""

    def __init__(
        self,
        partitions: list[str],
        gpus: int = 2,
        gpu_type: str = "fake",
        memory_mb: int = 64000,
        min_job_age: int = 300,
        root: Path | None = None,
    ):
        self.partitions = partitions
        self.gpus = gpus
        self.gpu_type = gpu_type
        self.memory_mb = memory_mb
        self.min_job_age = min_job_age
        # Short path: slurmd puts one unix socket per job step under its spool dir (108-byte limit).
        self._own_root = root is None
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="slurm-"))
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self._pids: dict[str, int] = {}  # daemon name -> PID, from its pid file once it is up

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) with this cluster's client commands first on
        PATH.  They carry the configuration's path themselves: SLURM_CONF alone does not reach every
        client, e.g. the executor's jobstep removes all SLURM_* variables before its nested ``srun``."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = f"{self.root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return env

    # -- configuration -------------------------------------------------------------------------------
    def _write_config(self) -> None:
        r = self.root
        for sub in ("state", "spool", "log", "dev", "bin"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        for name in CLIENTS:
            wrapper = r / "bin" / name
            wrapper.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}" exec "{shutil.which(name)}" "$@"\n')
            wrapper.chmod(0o755)
        # munged refuses a socket in a directory that others cannot traverse.
        r.chmod(0o755)
        key = r / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        for i in range(self.gpus):
            dev = r / "dev" / f"gpu{i}"
            if not dev.exists():
                os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))  # a character device (/dev/null's numbers)
        cpus = os.cpu_count() or 1
        lines = [
            "ClusterName=test",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={r / 'munge.socket'}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            # No cgroups here (containers, no systemd): track processes by parentage, no task binding.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "SwitchType=switch/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            # Without a default, a job that names no memory takes the whole node and jobs run one by one.
            "DefMemPerCPU=1000",
            # Finished jobs stay visible to squeue/scontrol this long: the executor's squeue status checks
            # and the tests' job records rely on it.
            f"MinJobAge={self.min_job_age}",
            "ReturnToService=2",
            "GresTypes=gpu",
            # The node is what this file says, not what the machine has: the memory is nominal, so the
            # profile's requests fit on any test machine (nothing enforces them: TaskPlugin=task/none).
            "SlurmdParameters=config_overrides",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={self.memory_mb}"
            f" Gres=gpu:{self.gpu_type}:{self.gpus} State=UNKNOWN",
        ]
        for i, name in enumerate(self.partitions):
            default = "YES" if i == 0 else "NO"
            lines.append(f"PartitionName={name} Nodes=ALL Default={default} MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")
        devices = r / "dev" / (f"gpu[0-{self.gpus - 1}]" if self.gpus > 1 else "gpu0")
        (r / "gres.conf").write_text(f"NodeName={self.node} Name=gpu Type={self.gpu_type} File={devices}\n")

    # -- life cycle ----------------------------------------------------------------------------------
    def _launch(self, name: str, args: list[str], pid_file: Path, timeout: float = 15) -> None:
        """Run a daemon that forks into the background; remember the PID from its pid file."""
        proc = subprocess.run(args, env=self.env(), capture_output=True, text=True, timeout=timeout)
        deadline = time.monotonic() + timeout
        while not (pid_file.exists() and pid_file.read_text().strip()):
            if time.monotonic() > deadline or proc.returncode != 0:
                raise RuntimeError(f"{name} did not start ({proc.returncode}): {proc.stderr}\n{self.logs()}")
            time.sleep(0.1)
        self._pids[name] = int(pid_file.read_text().strip())

    def start(self, timeout: float = 60) -> SlurmCluster:
        """Write the configuration, start the daemons and wait until the node takes jobs."""
        self._write_config()
        r = self.root
        self._launch(
            "munged",
            [
                str(MUNGED),
                f"--key-file={r / 'munge.key'}",
                f"--socket={r / 'munge.socket'}",
                f"--pid-file={r / 'munged.pid'}",
                f"--log-file={r / 'log' / 'munged.log'}",
                f"--seed-file={r / 'munged.seed'}",
            ],
            r / "munged.pid",
        )
        self._launch("slurmctld", [str(SLURMCTLD)], r / "slurmctld.pid")
        self._launch("slurmd", [str(SLURMD)], r / "slurmd.pid")
        deadline = time.monotonic() + timeout
        states: set[str] = set()
        while states != {"idle"}:
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {self.node} is {states}, not idle after {timeout} s\n{self.logs()}")
            time.sleep(0.2)
            if len(self.running_daemons()) < len(self._pids):
                raise RuntimeError(f"a SLURM daemon exited during start-up\n{self.logs()}")
            out = self.run(["sinfo", "-h", "-N", "-n", self.node, "-o", "%T"], check=False).stdout
            states = set(out.split())  # one line per partition
        return self

    def stop(self, timeout: float = 20) -> None:
        """Cancel every job, then end the daemons ``start()`` launched, by PID, and remove the directory."""
        if "slurmctld" in self.running_daemons_by_name():
            try:
                user = pwd.getpwuid(os.geteuid()).pw_name
                self.run(["scancel", "--full", "--user", user], check=False, timeout=10)
                deadline = time.monotonic() + timeout
                active = ["squeue", "-h", "-t", "RUNNING,COMPLETING,PENDING"]
                while (
                    time.monotonic() < deadline and self.run(active, check=False, timeout=10).stdout.strip()
                ):
                    time.sleep(0.5)
            except (subprocess.SubprocessError, OSError):
                pass  # the daemons go anyway
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self._pids.get(name)
            if pid is None or not _alive(pid):
                continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self._own_root and not self.running_daemons():
            shutil.rmtree(self.root, ignore_errors=True)

    def running_daemons_by_name(self) -> dict[str, int]:
        return {name: pid for name, pid in self._pids.items() if _alive(pid)}

    def running_daemons(self) -> list[int]:
        """PIDs of the daemons ``start()`` launched that are still alive (none after ``stop()``)."""
        return list(self.running_daemons_by_name().values())

    # -- queries -------------------------------------------------------------------------------------
    def run(self, args: list[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        proc = subprocess.run(args, env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return proc

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still remembers (MinJobAge), as ``scontrol -d show job`` key=value fields.

        Values may contain spaces (``Command``, ``Comment``); a field ends where the next ``Key=`` starts.
        """
        out = self.run(["scontrol", "-d", "-o", "show", "job"]).stdout
        field = re.compile(r"(?:^|\s)([A-Za-z][\w:/]*)=(.*?)(?=\s[A-Za-z][\w:/]*=|$)")
        records = []
        for line in out.splitlines():
            if line.strip() and not line.startswith("No jobs"):
                records.append({key: value.strip() for key, value in field.findall(line.strip())})
        return records

    def logs(self, tail: int = 3000) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)
