"""One writer per output: a lease file that a job holds while it writes a folder.

    with Lease("s3://bucket/posteriors/cfm"):     # raises OutputBusy if another job holds it
        ...write the catalog...

The lease is ``<out>/_lock.json`` (``_``-prefixed, so Parquet readers skip it), created with an
exclusive create (``storage.create_exclusive``: ``O_EXCL`` locally, a conditional PUT on S3).
It names its holder (host, pid, a random token) and an expiry time; a thread renews it every
``ttl / 3`` seconds while the job runs, and it is deleted at the end. A lease is stale, and is
taken over, when it has expired (its holder died without deleting it) or, on the same host,
when its holder's process no longer exists, so a killed job never blocks the next one for
longer than ``ttl``.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from . import storage

LOCK_FILE = "_lock.json"
#: Seconds a lease stays valid without renewal; ``RAYGAL_LEASE_TTL_S`` overrides it.
DEFAULT_TTL_S = 120.0


class OutputBusy(storage.StorageError):
    """Another job is writing the same output."""


def _ttl() -> float:
    return float(os.environ.get("RAYGAL_LEASE_TTL_S", DEFAULT_TTL_S))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    """Exclusive right to write ``out_uri`` (see the module docstring)."""

    def __init__(self, out_uri: str, what: str = "write", ttl: float | None = None):
        self.out_uri = out_uri
        self.uri = storage.join(out_uri, LOCK_FILE)
        self.what = what
        self.ttl = float(ttl if ttl is not None else _ttl())
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    def _record(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                           "token": self.token, "job": self.what,
                           "expires": time.time() + self.ttl}).encode()

    def _read(self) -> dict | None:
        try:
            return json.loads(storage.read_bytes(self.uri).decode())
        except FileNotFoundError:
            return None
        except ValueError:          # half-written by a local writer killed mid-create
            return {"expires": 0}

    @staticmethod
    def _stale(rec: dict) -> bool:
        if float(rec.get("expires", 0)) < time.time():
            return True
        if rec.get("host") == socket.gethostname() and isinstance(rec.get("pid"), int):
            return not _pid_alive(rec["pid"])
        return False

    def acquire(self) -> "Lease":
        for _ in range(3):
            if storage.create_exclusive(self.uri, self._record()):
                break
            rec = self._read()
            if rec is not None and not self._stale(rec):
                left = max(0.0, float(rec.get("expires", 0)) - time.time())
                raise OutputBusy(
                    f"{self.out_uri} is being written by another job ({rec.get('job')}, pid "
                    f"{rec.get('pid')} on {rec.get('host')}); wait for it to finish, or, if "
                    f"that job is gone, retry after its lease expires in {left:.0f} s")
            storage.delete(self.uri)            # stale: its holder is gone
        else:
            raise OutputBusy(f"{self.out_uri}: could not take the write lease ({self.uri})")
        self.held = True
        self._thread = threading.Thread(target=self._renew, daemon=True,
                                        name=f"raygal-lease-{self.token[:6]}")
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3.0):
            try:
                rec = self._read()
                if rec is None or rec.get("token") != self.token:
                    return              # taken over after we stalled past the expiry
                storage.write_bytes(self.uri, self._record())
            except Exception:           # a transient storage error: try again next round
                continue

    def release(self) -> None:
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            rec = self._read()
            if rec is not None and rec.get("token") == self.token:
                storage.delete(self.uri)
        finally:
            self.held = False

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
