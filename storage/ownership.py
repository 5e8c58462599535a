"""Who owns a claimed row (a running training run, an import being staged) and whether that
owner is still alive.

An owner is a process: its host name, pid and start time. The start time tells the owner from an
unrelated process that got the same pid after the owner died, so a dead owner is recognised at
once, with no heartbeat to wait out. A process on another host cannot be checked from here; it
is taken as alive, and only an entry point on its own host declares it dead.
"""
from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import dataclass

import psutil

#: Two start times closer than this are the same process (pids are not reused that fast).
SAME_START_S = 0.5


def this_host() -> str:
    return socket.gethostname()


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    started: float  # the process's start time, seconds since the epoch

    @classmethod
    def this_process(cls) -> "Owner":
        owner = cls.of_pid(os.getpid())
        assert owner is not None  # this process is running
        return owner

    @classmethod
    def of_pid(cls, pid: int) -> "Owner | None":
        """The local process `pid`, or None if there is none."""
        try:
            return cls(this_host(), pid, psutil.Process(pid).create_time())
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return None

    def is_local(self) -> bool:
        return self.host == this_host()

    def is_alive(self) -> bool:
        """False only when this host can see that the process is gone (or is a zombie)."""
        if not self.is_local():
            return True
        try:
            process = psutil.Process(self.pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return False
            return abs(process.create_time() - self.started) < SAME_START_S
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return False
        except psutil.AccessDenied:  # another user's live process
            return True

    def kill(self, wait_s: float = 10.0) -> bool:
        """SIGKILL this process if it is alive and local; wait until it is gone. True if it was killed."""
        if not self.is_local() or not self.is_alive():
            return False
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        deadline = time.monotonic() + wait_s
        while self.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        return True
