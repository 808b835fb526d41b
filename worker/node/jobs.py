"""The job manager: uploads, the queue, device allocation, running, metering and receipts.

Jobs go ``uploading → ready → queued → running → succeeded | failed | cancelled``. Several jobs
run at once on distinct devices; the others wait in a first-fit queue. Every state change is
written to the :class:`~worker.node.store.JobStore` and announced as a :class:`JobEvent`, which
WatchJob streams. The manager never imports job code: a job only ever runs in the sandbox.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, cast

from eth_account.signers.local import LocalAccount

from marketplace.errors import BundleError, SandboxError, VerificationError, WorkerError
from marketplace.protocol.auth import Domain
from marketplace.protocol.bundle import Bundle, expand_args, launcher_steps, load_bundle, unpack_bundle
from marketplace.protocol.merkle import (
    EMPTY_ROOT,
    FileEntry,
    ResultManifest,
    bounded_manifest,
    file_sha256,
    manifest_of,
)
from marketplace.protocol.receipts import UsageReceipt, sign_receipt
from marketplace.rpc import worker_pb2 as pb
from marketplace.sdk import PROGRESS_PREFIX
from worker.node.config import WorkerConfig
from worker.node.datasets import DatasetStore
from worker.node.devices import DeviceInfo, UtilizationSampler, check_request
from worker.node.environments import (
    Environment,
    EnvironmentBuildError,
    EnvironmentCache,
    EnvironmentSettings,
    needs_environment,
)
from worker.node.leases import Lease
from worker.node.receive import ArchiveReceiver
from worker.node.store import TERMINAL, JobRecord, JobStore
from worker.sandbox.runner import JobSpace, Limits, Sandbox, SandboxRequest

__all__ = ["ENVIRONMENT_FAILED", "MAX_LOG_EVENTS", "JobManager", "device_proto", "receipt_proto", "unbuildable"]

ENVIRONMENT_FAILED = "environment: "
"""How the reason of a job begins whose declared environment could not be built or served (it never ran)."""


def unbuildable(job: JobRecord) -> bool:
    """Whether a job failed before it ran because its declared environment could not be built here.

    Such a bundle is not runnable on this provider: its provider reports it as a no-show (nothing
    ran, nothing is claimed, it is not slashed for work nobody could do)."""
    return job.state == "failed" and job.started is None and (job.reason or "").startswith(ENVIRONMENT_FAILED)


log = logging.getLogger(__name__)

MAX_LOG_EVENTS = 5000
"""Log lines streamed as events per job; the rest are only in the result's log files."""
MAX_LINE = 4096
"""Longest log line sent to watchers, in bytes; the rest of a longer line is only in the log file."""
_READ = 1 << 20
_DAMAGED = "the archive does not match its sha256; upload it again"
_PIPE_READ = 64 << 10


def device_proto(d: DeviceInfo, busy: bool = False) -> pb.Device:
    """The wire form of a device."""
    return pb.Device(
        kind=d.kind,
        index=d.index,
        model=d.model,
        memory_bytes=d.memory_bytes,
        uuid=d.uuid,
        driver=d.driver,
        compute_capability=d.compute_capability,
        busy=busy,
    )


def receipt_proto(data: dict[str, Any] | None) -> pb.Receipt | None:
    """The wire form of a stored receipt."""
    if not data:
        return None
    return pb.Receipt(
        job_id=data["job_id"],
        provider=data["provider"],
        result_root=bytes.fromhex(data["result_root"][2:]),
        device_seconds=data["device_seconds"],
        cpu_millis=data["cpu_millis"],
        peak_memory_bytes=data["peak_memory_bytes"],
        exit_code=data["exit_code"],
        signature=bytes.fromhex(data["signature"][2:]),
    )


def metering_proto(data: dict[str, Any] | None) -> pb.Metering | None:
    """The wire form of stored metering."""
    if not data:
        return None
    m = pb.Metering(
        wall_millis=data["wall_millis"],
        device_count=data["device_count"],
        device_millis=data["device_millis"],
        cpu_millis=data["cpu_millis"],
        peak_memory_bytes=data["peak_memory_bytes"],
    )
    if data.get("gpu_utilization_percent") is not None:
        m.gpu_utilization_percent = data["gpu_utilization_percent"]
    if data.get("env_build_millis"):
        m.env_build_millis = data["env_build_millis"]
    return m


@dataclass
class _Running:
    job_id: int
    devices: list[int]
    cancelled: threading.Event
    kill: Callable[[str], None] | None = None
    group: str | None = None


class JobManager:
    """Owns the jobs of one worker. All public methods are thread-safe."""

    def __init__(
        self,
        config: WorkerConfig,
        store: JobStore,
        sandbox: Sandbox,
        devices: list[DeviceInfo],
        signer: LocalAccount,
        domain: Domain,
    ) -> None:
        self.config = config
        self.store = store
        self.sandbox = sandbox
        self.devices = devices
        self.signer = signer
        self.domain = domain
        self.data_dir = config.data_dir
        (self.data_dir / "uploads").mkdir(parents=True, exist_ok=True)
        (self.data_dir / "jobs").mkdir(parents=True, exist_ok=True)
        self.datasets = DatasetStore(self.data_dir / "datasets", config.datasets, is_live=self._job_live)
        self._cond = threading.Condition()
        self._queue: list[int] = []
        self._free = set(range(len(devices)))
        self._running: dict[int, _Running] = {}
        self._groups: dict[int, tuple[str, int]] = {}  # job -> (device group, devices the group may hold)
        self._upload_locks: dict[int, threading.Lock] = {}
        self._closed = False
        self._environments: EnvironmentCache | None = None
        self._environments_lock = threading.Lock()
        self._end_listeners: list[Callable[[int], None]] = []
        self.fail_interrupted()
        self.expire_uploads()  # what a previous run left behind
        threading.Thread(target=self._expire_loop, name="upload-janitor", daemon=True).start()

    # -- bookkeeping --------------------------------------------------------------------------

    def _job_live(self, job_id: int) -> bool:
        """Whether a job may still run or be re-run by a verifier: the datasets it reads stay pinned
        until it ended ``datasets.keep_after_job_s`` ago."""
        job = self.store.get(job_id)
        if job is None:
            return False
        if not job.terminal:
            return True
        ended = job.finished or job.created
        return time.time() - ended < self.config.datasets.keep_after_job_s

    def fail_interrupted(self) -> None:
        """Mark jobs that were queued or running when the worker last stopped as failed."""
        for job in self.store.jobs_in("queued", "running"):
            reason = f"worker restarted while the job was {job.state}"
            self.store.update(job.job_id, state="failed", reason=reason, finished=time.time())
            self._event(job.job_id, failed=pb.Failed(reason=reason, exit_code=-1))

    def _event(self, job_id: int, **kind: Any) -> None:
        def make(seq: int) -> bytes:
            ev = pb.JobEvent(seq=seq, time_unix_ms=int(time.time() * 1000), job_id=job_id, **kind)
            return bytes(ev.SerializeToString())

        self.store.add_event(job_id, make)
        with self._cond:
            self._cond.notify_all()
            listeners = list(self._end_listeners) if ("finished" in kind or "failed" in kind) else []
        for listener in listeners:
            listener(job_id)

    def add_end_listener(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(job_id)`` each time a job ends (its final event is stored); keep it short.

        A provider daemon wakes on it, so it commits a result the moment the run ends.
        """
        with self._cond:
            self._end_listeners.append(listener)

    def remove_end_listener(self, listener: Callable[[int], None]) -> None:
        """Stop calling ``listener`` (one never added is ignored)."""
        with self._cond:
            if listener in self._end_listeners:
                self._end_listeners.remove(listener)

    def job_dir(self, job_id: int) -> Path:
        """The job's directory in the data dir."""
        return self.data_dir / "jobs" / str(job_id)

    def get(self, job_id: int) -> JobRecord:
        """The job, or NOT_FOUND."""
        job = self.store.get(job_id)
        if job is None:
            raise WorkerError(f"no job {job_id} on this worker", code="NOT_FOUND")
        return job

    def queue_position(self, job_id: int) -> int:
        """Position of a queued job (0 = next), or 0."""
        with self._cond:
            return self._queue.index(job_id) if job_id in self._queue else 0

    def counts(self) -> tuple[int, int]:
        """(queued, running) job counts."""
        with self._cond:
            return len(self._queue), len(self._running)

    def busy_devices(self) -> set[int]:
        """Indices (into ``devices``) held by running jobs."""
        with self._cond:
            return set(range(len(self.devices))) - self._free

    # -- uploads ------------------------------------------------------------------------------

    def _upload_lock(self, job_id: int) -> threading.Lock:
        with self._cond:
            return self._upload_locks.setdefault(job_id, threading.Lock())

    def part_path(self, job_id: int, sha: bytes) -> Path:
        """Where the partial archive of an upload lives."""
        return self.data_dir / "uploads" / f"{job_id}-{sha.hex()}.part"

    def expire_uploads(self) -> int:
        """Delete unfinished uploads untouched for ``config.upload_idle_s``; return how many.

        An upload in progress holds its job's lock and is never deleted under it; its requester
        resumes from QueryUpload's answer (0 once its part is gone).
        """
        cutoff = time.time() - self.config.upload_idle_s
        removed = 0
        for part in (self.data_dir / "uploads").glob("*.part"):
            try:
                job_id = int(part.name.split("-", 1)[0])
                if part.stat().st_mtime >= cutoff:
                    continue
            except (ValueError, OSError):
                continue
            lock = self._upload_lock(job_id)
            if not lock.acquire(blocking=False):
                continue
            try:
                if part.stat().st_mtime < cutoff:
                    part.unlink()
                    removed += 1
                    log.info("deleted the upload %s, idle for over %.0f s", part.name, self.config.upload_idle_s)
            except OSError:
                pass
            finally:
                lock.release()
        return removed

    def _expire_loop(self) -> None:
        interval = min(60.0, max(0.5, self.config.upload_idle_s / 4))
        while True:
            with self._cond:
                if self._cond.wait_for(lambda: self._closed, timeout=interval):
                    return
            try:
                self.expire_uploads()
                self.datasets.expire_parts()
            except Exception:  # the janitor must outlive a bad directory entry
                log.exception("expiring uploads failed")

    def refuse(self, job_id: int, reason: str) -> bool:
        """Close a job to its requester for good, before it ran (its provider reported a no-show).

        A pending upload is deleted, a bundle that was never started is dropped, and any later
        upload or start is refused with ``reason``. Returns False, changing nothing, while an
        upload stream holds the job (the caller tries again) or once the job has started.
        """
        lock = self._upload_lock(job_id)
        if not lock.acquire(timeout=5):
            return False
        try:
            job = self.store.get(job_id)
            if job is None:
                job = self.store.upsert_upload(job_id, "", bytes(32), 0)
            if job.state not in ("uploading", "ready"):
                return (job.state == "cancelled" and job.started is None) or unbuildable(job)
            for part in (self.data_dir / "uploads").glob(f"{job_id}-*.part"):
                part.unlink(missing_ok=True)
            shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
            self._finish_without_run(job_id, reason, "cancelled")
            return True
        finally:
            lock.release()

    def upload_offset(self, job_id: int, sha: bytes) -> tuple[int, bool]:
        """(bytes held, complete) for an upload of the archive with sha256 ``sha``."""
        job = self.store.get(job_id)
        if job is not None and job.state != "uploading" and job.archive_sha256 == sha:
            return int(job.archive_size or 0), True
        part = self.part_path(job_id, sha)
        return (part.stat().st_size if part.exists() else 0), False

    def receive_upload(self, lease: Lease, size: int, sha: bytes, offset: int, chunks: Any) -> tuple[JobRecord, int]:
        """Append the ``(data, sha256)`` chunks to the upload from ``offset``; finish it when complete.

        A chunk's sha256 is checked when the client sent one (empty: the archive's digest, checked
        before anything is used, covers it). An upload that starts at offset 0 is unpacked as it
        arrives, in the same pass (:class:`~worker.node.receive.ArchiveReceiver`), into a staging
        folder that becomes the job's bundle only once the whole archive matches its sha256; a
        resumed upload is unpacked from the partial archive at its end. Returns the job and the
        bytes held. Raises WorkerError with the status code to send.
        """
        job_id = lease.job_id
        if size > self.config.max_bundle_bytes:
            raise WorkerError(
                f"bundle archive of {size} bytes exceeds this worker's limit of {self.config.max_bundle_bytes}",
                code="RESOURCE_EXHAUSTED",
            )
        if len(sha) != 32:
            raise WorkerError("archive_sha256 must be 32 bytes", code="INVALID_ARGUMENT")
        lock = self._upload_lock(job_id)
        if not lock.acquire(blocking=False):
            raise WorkerError(f"another upload of job {job_id} is in progress", code="ABORTED")
        staged = False
        try:
            existing = self.store.get(job_id)
            if existing is not None and existing.state == "cancelled" and existing.started is None:
                raise WorkerError(f"job {job_id} is closed: {existing.reason}", code="FAILED_PRECONDITION")
            if existing is not None and existing.state != "uploading":
                if existing.archive_sha256 == sha:
                    return existing, int(existing.archive_size or 0)
                raise WorkerError(f"job {job_id} already has a bundle", code="ALREADY_EXISTS")
            self.store.upsert_upload(job_id, lease.requester, sha, size)
            part = self.part_path(job_id, sha)
            held = part.stat().st_size if part.exists() else 0
            if offset != held:
                raise WorkerError(
                    f"upload offset {offset} does not match the {held} bytes held; "
                    "resume from QueryUpload's received_bytes",
                    code="FAILED_PRECONDITION",
                )
            # With a bundle hash in the lease, the BLAKE3 hash of what is unpacked proves the bytes:
            # the archive's sha256 is read only when something fails (see _finish_upload).
            running_hash = hashlib.sha256() if held == 0 and lease.bundle_hash is None else None
            unpacked: Bundle | BundleError | None = None
            with open(part, "ab") as fh:
                receiver = ArchiveReceiver(chunks, fh, running_hash, held, size)
                if held == 0 and size > 0:
                    shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
                    self.job_dir(job_id).mkdir(parents=True)
                    staged = True
                    try:
                        unpacked = unpack_bundle(
                            cast(IO[bytes], receiver), self._staging(job_id), max_bytes=self.config.max_unpacked_bytes
                        )
                    except BundleError as exc:  # told once the archive's digest is known to match
                        unpacked = exc
                receiver.drain()
                held = receiver.held
            if held < size:
                job = self.store.get(job_id)
                assert job is not None
                return job, held
            staged = False
            return self._finish_upload(lease, part, sha, running_hash, unpacked), held
        finally:
            if staged:  # the stream broke off or was refused: nothing unpacked is kept
                shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
            lock.release()

    def _staging(self, job_id: int) -> Path:
        return self.job_dir(job_id) / "bundle.unpacking"

    def _finish_upload(
        self, lease: Lease, part: Path, sha: bytes, running: Any, unpacked: Bundle | BundleError | None = None
    ) -> JobRecord:
        """Check the archive, then keep what was unpacked while it arrived (``unpacked``: the bundle,
        or the error that stopped it) or, for an upload that resumed, unpack it now.

        A lease that names the bundle hash is checked against the hash of what was unpacked, which
        covers every byte that is kept; the archive's sha256 is then read only when the bundle is
        refused, to tell a damaged upload (DATA_LOSS: upload it again) from another bundle. A lease
        without one (no hash to hold the bundle to) has the archive checked against its sha256 first.
        """
        job_id = lease.job_id
        proven = lease.bundle_hash is not None
        target = self.job_dir(job_id) / "bundle"
        try:
            if not proven and (running.digest() if running is not None else file_sha256(part)) != sha:
                raise WorkerError(_DAMAGED, code="DATA_LOSS")
            if isinstance(unpacked, BundleError):
                raise unpacked
            if unpacked is not None:
                self._staging(job_id).rename(target)
                bundle = replace(unpacked, root=target)
            else:
                shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
                self.job_dir(job_id).mkdir(parents=True)
                bundle = unpack_bundle(part, target, max_bytes=self.config.max_unpacked_bytes)
            self._check_bundle(lease, bundle)
            self.datasets.admit_job(job_id, lease.requester, bundle.spec.job.datasets, "ENDPOINT")
        except BaseException as exc:
            shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
            damaged = proven and isinstance(exc, BundleError | WorkerError) and file_sha256(part) != sha
            part.unlink(missing_ok=True)
            if damaged:
                raise WorkerError(_DAMAGED, code="DATA_LOSS") from None
            raise
        part.unlink(missing_ok=True)
        self.store.update(job_id, state="ready", bundle_hash=bundle.hash)
        job = self.store.get(job_id)
        assert job is not None
        return job

    @property
    def environments(self) -> EnvironmentCache:
        """The cache of declared environments (made on first use)."""
        with self._environments_lock:
            if self._environments is None:
                settings = self.config.environments or EnvironmentSettings(self.data_dir / "environments")
                self._environments = EnvironmentCache(settings, self.sandbox)
            return self._environments

    def _check_bundle(self, lease: Lease, bundle: Bundle) -> None:
        if lease.bundle_hash is not None and bundle.hash != lease.bundle_hash:
            raise WorkerError(
                f"bundle hash 0x{bundle.hash.hex()} is not the lease's 0x{lease.bundle_hash.hex()}",
                code="PERMISSION_DENIED",
            )
        res = bundle.spec.resources
        if res.device != lease.devices.kind or res.gpus > lease.devices.count:
            raise WorkerError(
                f"bundle asks for {res.gpus} {res.device} devices; the lease pays for "
                f"{lease.devices.count} {lease.devices.kind}",
                code="FAILED_PRECONDITION",
            )
        check_request(self.devices, res.device, res.gpus, int(res.min_memory_gb * 2**30))
        if needs_environment(bundle):
            why = self.environments.refusal(bundle)
            if why is not None:
                raise WorkerError(f"this worker cannot run the bundle: it {why}", code="FAILED_PRECONDITION")

    # -- the queue ----------------------------------------------------------------------------

    def start(self, job_id: int, seed: int, lease: Lease | None = None) -> JobRecord:
        """Queue a ready job; idempotent for a job already started.

        A ``lease`` with a device group holds the job back while the group's running jobs hold
        its ``devices.count`` devices (the devices of one reservation are shared by its jobs).
        """
        with self._cond:
            job = self.get(job_id)
            if job.state in ("queued", "running", *TERMINAL):
                return job
            if job.state != "ready":
                raise WorkerError(f"job {job_id} has no complete bundle yet", code="FAILED_PRECONDITION")
            if self._closed:
                raise WorkerError("the worker is shutting down", code="UNAVAILABLE")
            if not self.sandbox.sandboxed and not self.sandbox.allow_unsandboxed:
                raise SandboxError(
                    "bubblewrap is not available here and this worker refuses to run untrusted "
                    "jobs without it (its operator may start it with --unsafe-no-sandbox)"
                )
            if len(self._queue) >= self.config.max_queued:
                raise WorkerError(f"the queue is full ({self.config.max_queued} jobs)", code="RESOURCE_EXHAUSTED")
            bundle = self._load_unpacked(job_id, job.bundle_hash)
            res = bundle.spec.resources
            check_request(self.devices, res.device, res.gpus, int(res.min_memory_gb * 2**30))
            if lease is not None and lease.device_group is not None:
                if res.gpus > lease.devices.count:
                    raise WorkerError(
                        f"the job asks for {res.gpus} devices; its lease holds {lease.devices.count}",
                        code="FAILED_PRECONDITION",
                    )
                self._groups[job_id] = (lease.device_group, lease.devices.count)
            self.store.update(job_id, state="queued", seed=seed)
            self._queue.append(job_id)
            position = len(self._queue) - 1
        self._event(job_id, queued=pb.Queued(position=position))
        self._dispatch()
        return self.get(job_id)

    def _load_unpacked(self, job_id: int, known_hash: bytes | None) -> Bundle:
        """The job's unpacked bundle, validated; its hash is the one computed from the bytes as they
        were unpacked (the folder is the worker's own), so the files are not read again."""
        return load_bundle(self.job_dir(job_id) / "bundle", known_hash=known_hash)

    def _pick(self, bundle: Bundle) -> list[int] | None:
        res = bundle.spec.resources
        need = int(res.min_memory_gb * 2**30)
        fit = [
            i for i in sorted(self._free) if self.devices[i].kind == res.device and self.devices[i].memory_bytes >= need
        ]
        return fit[: res.gpus] if len(fit) >= res.gpus else None

    def _dispatch(self) -> None:
        with self._cond:
            if self._closed:
                return
            for job_id in list(self._queue):
                try:
                    record = self.store.get(job_id)
                    bundle = self._load_unpacked(job_id, record.bundle_hash if record else None)
                except BundleError as exc:
                    self._queue.remove(job_id)
                    self._finish_without_run(job_id, f"bundle unreadable: {exc}", "failed")
                    continue
                group = self._groups.get(job_id)
                if group is not None and self._group_busy(group[0]) + bundle.spec.resources.gpus > group[1]:
                    continue  # its group's devices are all in use: wait for one of its jobs to end
                chosen = self._pick(bundle)
                if chosen is None:
                    continue
                self._queue.remove(job_id)
                self._free -= set(chosen)
                run = _Running(job_id, chosen, threading.Event(), group=None if group is None else group[0])
                self._running[job_id] = run
                threading.Thread(
                    target=self._run_guarded, args=(run, bundle), name=f"job-{job_id}", daemon=True
                ).start()

    def _group_busy(self, group: str) -> int:
        """Devices held by running jobs of ``group`` (call with the lock held)."""
        return sum(len(run.devices) for run in self._running.values() if run.group == group)

    def _finish_without_run(self, job_id: int, reason: str, state: str) -> None:
        self.store.update(job_id, state=state, reason=reason, finished=time.time(), exit_code=-1)
        self._event(job_id, failed=pb.Failed(reason=reason, exit_code=-1))

    def cancel(self, job_id: int) -> JobRecord:
        """Cancel a job: drop it from the queue, or kill its whole process tree."""
        with self._cond:
            job = self.get(job_id)
            if job.terminal:
                return job
            if job_id in self._queue:
                self._queue.remove(job_id)
                queued = True
            else:
                queued = False
            run = self._running.get(job_id)
        if run is not None:
            run.cancelled.set()
            if run.kill is not None:
                run.kill("cancelled by the requester")
            with self._cond:
                self._cond.wait_for(lambda: job_id not in self._running, timeout=30)
        elif queued or job.state in ("ready", "uploading"):
            self._finish_without_run(job_id, "cancelled by the requester before it ran", "cancelled")
        return self.get(job_id)

    # -- running ------------------------------------------------------------------------------

    def _run_guarded(self, run: _Running, bundle: Bundle) -> None:
        try:
            self._run(run, bundle)
        except Exception as exc:  # a bug here must not leave the job running forever
            if self._closed:
                # Shut down under the job (its store may be closed already): nothing is left to record.
                log.warning("job %s: the worker shut down while the job ended (%s)", run.job_id, exc)
                return
            log.exception("job %s crashed the worker's runner", run.job_id)
            job = self.store.get(run.job_id)
            reason = f"worker error: {type(exc).__name__}: {exc}"
            if job is not None and job.state == "running" and job.started is not None:
                # It ran: its time is billed, with whatever logs made it out, and it ends failed.
                try:
                    self._end(
                        run,
                        self._logs_only(run.job_id),
                        wall_s=max(0.0, time.time() - job.started),
                        cpu_millis=0,
                        peak_memory_bytes=0,
                        exit_code=-1,
                        reason=reason,
                        state="failed",
                        utilization=None,
                    )
                except Exception:
                    log.exception("job %s: ending it after a crash failed", run.job_id)
                    self._finish_without_run(run.job_id, reason, "failed")
            elif job is not None and not job.terminal:
                self._finish_without_run(run.job_id, reason, "failed")
        finally:
            self._release(run)
            self._dispatch()

    def _release(self, run: _Running) -> None:
        """Give a job's devices back (idempotent): done before its final event is stored."""
        with self._cond:
            if self._running.pop(run.job_id, None) is not None:
                self._free |= set(run.devices)
            self._groups.pop(run.job_id, None)
            self._cond.notify_all()

    def _run(self, run: _Running, bundle: Bundle) -> None:
        job_id = run.job_id
        spec = bundle.spec
        shutil.rmtree(self.job_dir(job_id) / "result", ignore_errors=True)
        limits = replace(self.config.limits, timeout_s=min(float(spec.resources.timeout_s), self.config.max_timeout_s))
        try:
            # The job's writable space (work, output, checkpoints, logs, tmp): the sandbox makes it,
            # this manager takes the results out of it and releases it.
            trees = self.datasets.trees_for(spec.job.datasets)
            space = self.sandbox.create_space(limits, bundle.root, spec.job.inputs, trees)
        except (SandboxError, WorkerError) as exc:
            self._finish_without_run(job_id, str(exc), "failed")
            return
        try:
            # A declared environment is built (or found) before the job starts: its time is not the job's.
            held = self.environments.use(bundle) if needs_environment(bundle) else contextlib.nullcontext()
            with held as environment:
                self._run_in(run, bundle, space, limits, environment)
        except EnvironmentBuildError as exc:
            self._finish_without_run(job_id, exc.message, "failed")
        finally:
            space.release()

    def _run_in(
        self, run: _Running, bundle: Bundle, space: JobSpace, limits: Limits, environment: Environment | None = None
    ) -> None:
        job_id = run.job_id
        job = self.get(job_id)
        spec = bundle.spec
        devices = [self.devices[i] for i in run.devices]
        logs = space.logs
        env = {"FLOPEX_SEED": str(job.seed or 0), "FLOPEX_JOB_ID": str(job_id)}
        steps = launcher_steps(spec, self.sandbox.job_folders(space))
        if spec.resources.device == "cpu":
            threads = max(1, (os.cpu_count() or 1) // max(1, sum(d.kind == "cpu" for d in self.devices)))
            # torchrun starts a process per device: each gets its device's share.
            per_process = any(step.nproc > 1 for step in steps)
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads * (1 if per_process else len(devices)))
        req = SandboxRequest(
            name=f"job{job_id}",
            space=space,
            entrypoint=spec.job.entrypoint,
            args=expand_args(spec.job.args, self.sandbox.job_folders(space)),
            env=env,
            job_env=dict(spec.job.env),
            device_kind=spec.resources.device,
            gpu_indices=tuple(d.index for d in devices if d.kind == "cuda"),
            limits=limits,
            steps=steps,
            python=None if environment is None else environment.python,
        )

        if run.cancelled.is_set():
            self._finish_without_run(job_id, "cancelled by the requester before it ran", "cancelled")
            return
        started = time.time()
        self.store.update(job_id, state="running", started=started)
        self._event(
            job_id,
            started=pb.Started(devices=[device_proto(d, True) for d in devices], sandboxed=self.sandbox.sandboxed),
        )
        try:
            proc = self.sandbox.start(req)
        except SandboxError as exc:
            self._finish_without_run(job_id, str(exc), "failed")
            return
        run.kill = proc.kill
        if run.cancelled.is_set():
            proc.kill("cancelled by the requester")
        sampler = UtilizationSampler([d.index for d in devices if d.kind == "cuda"]).start()
        counter = [0]
        counter_lock = threading.Lock()
        readers = [
            threading.Thread(
                target=self._pump,
                args=(job_id, "stdout", proc.stdout, logs / "stdout.log", counter, counter_lock),
                daemon=True,
            ),
            threading.Thread(
                target=self._pump,
                args=(job_id, "stderr", proc.stderr, logs / "stderr.log", counter, counter_lock),
                daemon=True,
            ),
        ]
        for reader in readers:
            reader.start()
        outcome = proc.wait()
        ended = time.monotonic()
        for reader in readers:
            reader.join(timeout=10)
        utilization = sampler.stop()
        # Listing and hashing the results hold the devices, so they count as run time; they get the
        # time left to the job's timeout, and at least config.min_collect_s.
        deadline = ended + max(self.config.min_collect_s, limits.timeout_s - outcome.wall_s)
        try:
            space.export_results(self.job_dir(job_id) / "result")
            space.release()
            manifest, problem = self._collect(job_id, deadline)
        except Exception as exc:  # whatever fails after the job ran, it ends billed and in a clear state
            log.exception("job %s: collecting its results failed", job_id)
            manifest = self._logs_only(job_id)
            problem = f"the worker could not collect the results ({type(exc).__name__}); only the logs are kept"
        wall_s = outcome.wall_s + (time.monotonic() - ended)
        cancelled = run.cancelled.is_set()
        ok = outcome.exit_code == 0 and outcome.reason is None and not cancelled and problem is None
        reasons = [r for r in (outcome.reason, problem) if r]
        if not reasons and outcome.exit_code != 0:
            reasons.append(f"the job exited with status {outcome.exit_code}")
        if outcome.failed_step is not None and not cancelled:
            reasons.insert(0, f"{outcome.failed_step} failed with status {outcome.exit_code}; later steps did not run")
            reasons = [r for r in reasons if not r.startswith("the job exited with status")]
        state = "succeeded" if ok else ("cancelled" if cancelled else "failed")
        self._end(
            run,
            manifest,
            wall_s=wall_s,
            cpu_millis=outcome.cpu_millis,
            peak_memory_bytes=outcome.peak_memory_bytes,
            exit_code=outcome.exit_code,
            reason="; ".join(reasons),
            state=state,
            utilization=utilization,
            env_build_s=0.0 if environment is None else environment.build_s,
        )

    def _collect(self, job_id: int, deadline: float) -> tuple[ResultManifest, str | None]:
        """The manifest of a job's results within the worker's bounds, and why the job fails if it must.

        Over a bound (entries, bytes, time) the results are cut to the job's logs; names that are
        not UTF-8 are deleted from the results and named (escaped) in the reason.
        """
        folder = self.job_dir(job_id) / "result"
        limits = self.config.limits
        max_bytes = self.config.max_result_bytes or (limits.max_disk_bytes + 2 * self.config.max_log_bytes + (1 << 20))
        try:
            manifest, invalid = bounded_manifest(
                folder, max_entries=self.config.max_result_entries, max_bytes=max_bytes, deadline=deadline
            )
        except WorkerError as exc:
            return self._logs_only(job_id), f"{exc.message}; only the logs are kept"
        if not invalid:
            return manifest, None
        for rel in invalid:
            with contextlib.suppress(OSError):
                os.unlink(folder / rel)
        example = os.fsencode(invalid[0]).decode("utf-8", "backslashreplace")
        problem = (
            f"results: {len(invalid)} file name(s) are not valid UTF-8 and were left out of the results, "
            f"e.g. {example[:200]!r}"
        )
        return manifest, problem

    def _logs_only(self, job_id: int) -> ResultManifest:
        """Cut a job's results to its logs (or to nothing when even they cannot be listed); their manifest."""
        folder = self.job_dir(job_id) / "result"
        for name in ("output", "checkpoints", "work"):
            shutil.rmtree(folder / name, ignore_errors=True)
        try:
            manifest, invalid = bounded_manifest(
                folder,
                max_entries=16,
                max_bytes=4 * self.config.max_log_bytes + (1 << 20),
                deadline=time.monotonic() + 600,
            )
            if not invalid:
                return manifest
        except (OSError, WorkerError):
            log.exception("job %s: its logs cannot be listed either; it keeps no results", job_id)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        return ResultManifest((), EMPTY_ROOT)

    def _end(
        self,
        run: _Running,
        manifest: ResultManifest,
        *,
        wall_s: float,
        cpu_millis: int,
        peak_memory_bytes: int,
        exit_code: int,
        reason: str,
        state: str,
        utilization: float | None,
        env_build_s: float = 0.0,
    ) -> None:
        """End a job that ran: save its manifest, meter and sign its run, free its devices, tell watchers."""
        job_id = run.job_id
        self._save_manifest(job_id, manifest)
        devices = len(run.devices)
        wall_ms = int(wall_s * 1000)
        metering = {
            "wall_millis": wall_ms,
            "device_count": devices,
            "device_millis": wall_ms * devices,
            "cpu_millis": cpu_millis,
            "peak_memory_bytes": peak_memory_bytes,
            "gpu_utilization_percent": utilization,
            "env_build_millis": int(env_build_s * 1000),
        }
        receipt = UsageReceipt(
            job_id=job_id,
            provider=self.signer.address,
            result_root=manifest.root,
            device_seconds=math.ceil(wall_ms * devices / 1000),
            cpu_millis=cpu_millis,
            peak_memory_bytes=peak_memory_bytes,
            exit_code=max(-(2**31), min(2**31 - 1, exit_code)),
        )
        signed = sign_receipt(self.signer.key, self.domain, receipt)
        receipt_data = {**receipt.to_json(), "signature": "0x" + signed.signature.hex()}
        # The devices are free the moment the job ends: before anyone hears it has.
        self._release(run)
        self.store.update(
            job_id,
            state=state,
            reason=reason,
            exit_code=exit_code,
            result_root=manifest.root,
            metering=metering,
            receipt=receipt_data,
            finished=time.time(),
        )
        rproto, mproto = receipt_proto(receipt_data), metering_proto(metering)
        if state == "succeeded":
            self._event(
                job_id, finished=pb.Finished(exit_code=0, metering=mproto, result_root=manifest.root, receipt=rproto)
            )
        else:
            self._event(
                job_id,
                failed=pb.Failed(
                    reason=reason,
                    exit_code=exit_code,
                    metering=mproto,
                    result_root=manifest.root,
                    receipt=rproto,
                ),
            )

    def _pump(
        self, job_id: int, stream: str, pipe: IO[bytes], path: Path, counter: list[int], lock: threading.Lock
    ) -> None:
        """Copy one output stream of a job into its log file and to watchers, in bounded memory.

        The pipe is read in chunks of at most 64 KiB, never by line (one line may be gigabytes).
        The log file keeps the first ``config.max_log_bytes`` bytes, then a line saying it was
        truncated; the rest is read and dropped, so the job never blocks on a full pipe and is not
        killed for what it prints. A line sent to watchers is cut at ``MAX_LINE`` bytes and the
        rest of it dropped. A log file that cannot be written (the job's space is full) stops
        growing; the stream is still drained.
        """
        cap = self.config.max_log_bytes
        written = 0
        sink: IO[bytes] | None = None
        try:
            sink = open(path, "wb")
        except OSError as exc:
            log.warning("job %s: cannot write %s: %s", job_id, path.name, exc)
        line = bytearray()
        fd = pipe.fileno()
        try:
            while data := os.read(fd, _PIPE_READ):
                if sink is not None:
                    out, keep = sink, data[: cap - written]
                    try:
                        out.write(keep)
                        written += len(keep)
                        if len(keep) < len(data):
                            sink = None
                            out.write(
                                f"\n[flopex] log truncated: the job wrote more than {cap} bytes to {stream}; "
                                "the rest was dropped\n".encode()
                            )
                            out.close()
                    except OSError as exc:
                        log.warning("job %s: %s stopped growing: %s", job_id, path.name, exc)
                        sink = None
                        with contextlib.suppress(OSError):
                            out.close()
                if counter[0] > MAX_LOG_EVENTS:
                    continue  # no more events: the bytes only go to the file
                start = 0
                while (end := data.find(b"\n", start)) >= 0:
                    if len(line) < MAX_LINE:
                        line += data[start : min(end, start + MAX_LINE - len(line))]
                    self._log_line(job_id, stream, bytes(line), counter, lock)
                    line.clear()
                    start = end + 1
                if len(line) < MAX_LINE:
                    line += data[start : start + MAX_LINE - len(line)]
            if line:
                self._log_line(job_id, stream, bytes(line), counter, lock)
        finally:
            if sink is not None:
                with contextlib.suppress(OSError):
                    sink.close()
            with contextlib.suppress(OSError):
                pipe.close()

    def _log_line(self, job_id: int, stream: str, raw: bytes, counter: list[int], lock: threading.Lock) -> None:
        """Send one line (already cut at ``MAX_LINE`` bytes) as a log or progress event."""
        line = raw.decode("utf-8", errors="replace")
        with lock:
            counter[0] += 1
            n = counter[0]
        if n > MAX_LOG_EVENTS + 1:
            return
        if n == MAX_LOG_EVENTS + 1:
            self._event(
                job_id,
                log=pb.LogLine(
                    stream="stderr",
                    text="[flopex] more log lines are in logs/stdout.log and logs/stderr.log of the results",
                ),
            )
        elif stream == "stdout" and line.startswith(PROGRESS_PREFIX):
            self._event(job_id, progress=self._progress(line[len(PROGRESS_PREFIX) :]))
        else:
            self._event(job_id, log=pb.LogLine(stream=stream, text=line))

    @staticmethod
    def _progress(text: str) -> pb.Progress:
        try:
            data = json.loads(text)
        except ValueError:
            return pb.Progress(message=text[:MAX_LINE])
        if not isinstance(data, dict):
            return pb.Progress(message=text[:MAX_LINE])
        progress = pb.Progress(message=str(data.get("message", ""))[:MAX_LINE], json=text[:MAX_LINE])
        fraction = data.get("fraction")
        if isinstance(fraction, int | float) and not isinstance(fraction, bool):
            progress.fraction = float(fraction)
        return progress

    # -- events and results ---------------------------------------------------------------------

    def wait_events(self, job_id: int, from_seq: int, timeout: float) -> tuple[list[tuple[int, bytes]], bool]:
        """Events from ``from_seq`` (waiting up to ``timeout`` for one), and whether the job has ended."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.store.events(job_id, from_seq)
            job = self.get(job_id)
            if events or job.terminal:
                return events, job.terminal
            with self._cond:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return [], False
                self._cond.wait(min(remaining, 1.0))

    def _save_manifest(self, job_id: int, manifest: ResultManifest) -> None:
        data = {
            "root": manifest.root.hex(),
            "files": [[f.path, f.size, f.sha256.hex(), f.chunks] for f in manifest.files],
        }
        (self.job_dir(job_id) / "manifest.json").write_text(json.dumps(data))

    def _load_manifest(self, job_id: int) -> ResultManifest | None:
        path = self.job_dir(job_id) / "manifest.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        files = tuple(FileEntry(p, size, bytes.fromhex(sha), chunks) for p, size, sha, chunks in data["files"])
        return ResultManifest(files, bytes.fromhex(data["root"]))

    def results(self, job_id: int) -> tuple[JobRecord, ResultManifest, Path]:
        """The manifest of an ended job's results (computed when it ended) and their directory.

        Every file's size is checked against the manifest; requesters verify hashes and the root.
        """
        job = self.get(job_id)
        if not job.terminal:
            raise WorkerError(f"job {job_id} has not ended (it is {job.state})", code="FAILED_PRECONDITION")
        folder = self.job_dir(job_id) / "result"
        manifest = self._load_manifest(job_id)
        if not folder.is_dir() or manifest is None:
            raise WorkerError(f"job {job_id} ended without running; it has no results", code="FAILED_PRECONDITION")
        if manifest.root != (job.result_root or EMPTY_ROOT) or any(
            (folder / f.path).stat().st_size != f.size for f in manifest.files
        ):
            raise VerificationError(f"job {job_id}: results on disk no longer match the committed root")
        return job, manifest, folder

    def bundle_files(self, job_id: int) -> tuple[JobRecord, ResultManifest, Path]:
        """The manifest of a job's unpacked bundle and its directory (for verifiers to re-run it)."""
        job = self.get(job_id)
        folder = self.job_dir(job_id) / "bundle"
        if job.state == "uploading" or not folder.is_dir():
            raise WorkerError(f"job {job_id} has no complete bundle", code="FAILED_PRECONDITION")
        manifest, _ = manifest_of(folder)
        return job, manifest, folder

    def shutdown(self) -> None:
        """Stop starting jobs and kill the running ones (they are marked failed)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            running = list(self._running.values())
        for run in running:
            if run.kill is not None:
                run.kill("the worker is shutting down")
        with self._cond:
            self._cond.wait_for(lambda: not self._running, timeout=30)
