"""A batch's engine on its machine: connect (pinning the host key), launch, forward, stop.

Used by `batch.run`; everything here belongs to the one batch whose lease we hold. The launch
follows the batch's runtime target (`launch.plan_launch`). `start` is idempotent: after a dropped
connection it reconnects (same pinned host key), finds the engine still running (`reused`, not
relaunched), and restores the port-forward.

The port-forward is the data path (`RemoteHost.forward`): an OpenSSH subprocess or the
asyncssh connection's own forward, per the `ssh_tunnel` setting. Either dying counts as a drop
(`is_closed`): in-flight requests are left for the resumed run, which starts a fresh tunnel
(and reconnects first when the control connection went too).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import asyncssh

from neobatch.common.logs import log_fields
from neobatch.runtime_agent.batch.batches import Batch, machine_left_behind
from neobatch.runtime_agent.batch.lease_watch import BatchWatch
from neobatch.runtime_agent.batch.store import BatchStore
from neobatch.runtime_agent.engine.client import EngineClient, EngineNotReady
from neobatch.runtime_agent.machine import remote
from neobatch.runtime_agent.machine.engine_exit import EngineExitWatch
from neobatch.runtime_agent.machine.engine_log import last_error_line
from neobatch.runtime_agent.machine.errors import HostKeyMismatch, HostUnreachable, RemoteError
from neobatch.runtime_agent.machine.launch import EngineLaunch, plan_launch
from neobatch.runtime_agent.settings import AgentSettings

log = logging.getLogger("neobatch.runtime_agent.machine.session")

STOP_ATTEMPTS = 3
# How much of the end of the engine's log is searched for its last error line: vLLM's root
# cause sits about 10 KB above the end (the wrappers' tracebacks follow it).
ENGINE_LOG_SCAN_BYTES = 64 * 1024
# How much of it goes to the agent's log when the engine fails to start.
LOG_TAIL_BYTES = 2000


class EngineSession:
    def __init__(
        self,
        batch: Batch,
        *,
        store: BatchStore,
        settings: AgentSettings,
        client_key: asyncssh.SSHKey,
        owner: str,
        watch: BatchWatch,
        launch_key: str | None = None,
        pin_key: Callable[[str], Awaitable[str | None]] | None = None,
        still_wanted: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._batch = batch
        # A machine of a spread batch: its own work directory name, where its host key is
        # pinned, and whether it is still wanted (None: the batch's own, as for one machine).
        self._launch_key = launch_key or batch.id
        self._pin_key = pin_key
        self._still_wanted = still_wanted
        self._store = store
        self._settings = settings
        self._key = client_key
        self._owner = owner
        self._watch = watch
        self._host: remote.RemoteHost | None = None
        self._ids = {"batch_id": batch.id, "job_id": batch.job_id}
        # How many times this session started the engine (not counting finding it running).
        self.launches = 0
        # Set once the machine stopped answering SSH for good (the run raised RemoteLost or a
        # stop could not connect): there is no engine left to stop that we could reach.
        self.machine_gone = False
        # The engine of the last `start`: asked whether it exited when a request's connection
        # fails (`EngineExitWatch`).
        self._exit_watch: EngineExitWatch | None = None

    def _launch(self) -> EngineLaunch:
        # Read the batch each time: a replacement machine may come with another runtime.
        return plan_launch(self._batch.runtime, self._launch_key, self._batch.engine)

    async def _still_this_machine(self) -> bool:
        """False once the planner moved the batch to a replacement machine (retarget)."""
        if self._still_wanted is not None:
            return await self._still_wanted()
        try:
            current = await self._store.find_batch(self._batch.id)
        except Exception:
            return True  # the database being away says nothing about the machine
        return current is None or current.provision_id == self._batch.provision_id

    @property
    def connected(self) -> bool:
        """Whether we ever got onto the machine (so something may need stopping)."""
        return self._host is not None

    @property
    def is_closed(self) -> bool:
        """The connection dropped, or the tunnel carrying requests went down: reconnect."""
        return self._host is not None and self._host.tunnel_down

    async def _connect(
        self, ready_timeout_seconds: float, *, interruptible: bool
    ) -> remote.RemoteHost:
        if self._host is not None and not self._host.is_closed:
            return self._host
        if self._host is not None:  # dropped: let go of its forwards before reconnecting
            await self.close()
        pinned = self._batch.host_public_key
        connecting = remote.connect_until(
            self._batch.target,
            self._key,
            pinned,
            connect_timeout_seconds=self._settings.ssh_connect_timeout_seconds,
            ready_timeout_seconds=ready_timeout_seconds,
            still_wanted=self._still_this_machine if interruptible else None,
            # The file `client_key` was read from: the OpenSSH tunnel uses it in place.
            key_file=self._settings.ssh_key_file,
            tunnel=self._settings.ssh_tunnel,
        )
        # Starting up yields to a cancel or expiry; stopping the engine must not.
        host = await (self._watch.race(connecting) if interruptible else connecting)
        self._host = host
        if pinned is None:
            # First use: remember this key so every reconnect must present the same one.
            stored = await (
                self._pin_key(host.host_public_key)
                if self._pin_key is not None
                else self._store.pin_host_key(self._batch.id, self._owner, host.host_public_key)
            )
            if stored != host.host_public_key:
                raise HostKeyMismatch("host key changed while it was being pinned")
            self._batch.host_public_key = stored
        return host

    async def start(self) -> EngineClient:
        """Launch (or find) the engine, forward its port, wait until it is healthy.

        Raises RemoteError or EngineNotReady (the batch fails), or Interrupted (cancel,
        expiry or a lost lease cut the wait short).
        """
        engine = self._batch.engine
        launch = self._launch()
        self._exit_watch = None
        host = await self._connect(self._settings.ssh_ready_timeout_seconds, interruptible=True)
        _, reused = await host.launch(launch)
        if not reused:
            self.launches += 1
        base_url = await host.forward(engine.port)
        client = EngineClient.for_batch(base_url, self._batch, self._settings)
        # The asyncssh connection closed or the ssh subprocess exited: a transport error is then
        # the tunnel's, and the request waits for the resumed run instead of being retried.
        client.tunnel_down = lambda: host.tunnel_down
        self._exit_watch = EngineExitWatch(lambda: host.is_running(launch))
        client.engine_exited = self._exit_watch.confirm
        client.engine_dead = self._exit_watch.mark_dead
        try:
            await self._watch.race(
                client.wait_ready(
                    engine.health_endpoint,
                    engine.ready_timeout_seconds,
                    still_starting=lambda: host.is_running(launch),
                )
            )
        except EngineNotReady as exc:
            await client.close()
            raise await self._explained(host, launch, exc) from None
        except BaseException:
            await client.close()
            raise
        log.info(
            "engine ready",
            extra=log_fields(
                **self._ids,
                base_url=base_url,
                tunnel=host.tunnel_mode,
                reused=reused,
                in_docker=launch.in_docker,
            ),
        )
        return client

    @property
    def engine_exited(self) -> bool:
        """The engine of the last `start` is known to have exited (a request found it gone)."""
        return self._exit_watch is not None and self._exit_watch.exited

    async def exit_reason(self) -> str:
        """After `engine_exited`: the engine's own last error line, read from its log before
        a relaunch overwrites it (and logged with the log's tail); "" when none or unreadable."""
        if self._exit_watch is not None:
            await self._exit_watch.close()
        if self._host is None:
            return ""
        launch = self._launch()
        reason = await self._engine_error(self._host, launch, "engine exited mid-batch")
        # Whatever of it is left goes before the relaunch: a vLLM whose engine core died may
        # keep its API server up (answering 500, /health 503), which the relaunch would
        # otherwise find running and reuse. Stopping what already exited is a no-op.
        try:
            await self._host.stop(launch, self._settings.engine_stop_grace_seconds)
        except (RemoteError, OSError, asyncssh.Error) as exc:
            log.warning(
                "could not stop the exited engine", extra=log_fields(**self._ids, error=str(exc))
            )
        return reason

    async def _explained(
        self, host: remote.RemoteHost, launch: EngineLaunch, exc: EngineNotReady
    ) -> EngineNotReady:
        """`exc` led by the engine's own last error line, read from its log before the batch
        ends (ending removes the work directory and the log with it)."""
        line = await self._engine_error(host, launch, "engine not ready")
        return EngineNotReady(f"{line} ({exc.message})") if line else exc

    async def _engine_error(self, host: remote.RemoteHost, launch: EngineLaunch, event: str) -> str:
        """The engine's last error line: scrubbed and bounded, for the batch's error; the log's
        last `LOG_TAIL_BYTES` (redacted) go into the agent's log under `event`. Reading it is
        bounded and never raises ("" when it cannot be read)."""
        try:
            tail = await host.log_tail(launch, ENGINE_LOG_SCAN_BYTES)
        except (RemoteError, OSError, asyncssh.Error) as read_error:
            log.warning(
                f"{event}; its log could not be read",
                extra=log_fields(**self._ids, error=str(read_error)),
            )
            return ""
        line = last_error_line(tail)
        log.warning(
            event,
            extra=log_fields(**self._ids, engine_error=line, log_tail=tail[-LOG_TAIL_BYTES:]),
        )
        return line

    async def stop(self) -> None:
        """Stop the engine and remove the batch's work directory, a few tries, reconnecting
        if needed; never raises.

        Best effort by design: the planner releases the whole machine after the terminal
        event, so a host that vanished must not keep the batch from ending.
        """
        try:
            launch = self._launch()
        except RemoteError:
            return  # nothing this agent knows how to launch was ever started
        if self.machine_gone:
            log.info("machine unreachable; not stopping its engine", extra=log_fields(**self._ids))
            return
        for attempt in range(1, STOP_ATTEMPTS + 1):
            try:
                host = await self._connect(10.0 * attempt, interruptible=False)
                await host.stop(launch, self._settings.engine_stop_grace_seconds)
                await self._remove_workdir(host, launch)
                return
            except HostUnreachable as exc:
                # Nobody answers SSH: the machine is gone or going, and the planner releases
                # it whole. Retrying here only held a cancelled batch up for a minute.
                log.warning(
                    "could not reach the machine to stop the engine",
                    extra=log_fields(**self._ids, error=exc.message),
                )
                self.machine_gone = True
                return
            except (RemoteError, OSError, asyncssh.Error) as exc:
                log.warning(
                    "could not stop the engine",
                    extra=log_fields(**self._ids, attempt=attempt, error=str(exc)),
                )
                await self.close()

    async def stop_if_left_behind(self) -> None:
        """After the lease was lost: stop the engine and remove the work directory when no one
        else will (`machine_left_behind`: the batch ended or moved to another machine); leave
        them to the new owner otherwise, or when the database cannot say. Never raises."""
        if not self.connected:
            return  # never got onto the machine: nothing of ours is there
        try:
            current = await self._store.find_batch(self._batch.id)
        except Exception:
            return
        if machine_left_behind(self._batch, current):
            log.info("lease lost; stopping the engine left behind", extra=log_fields(**self._ids))
            await self.stop()

    async def _remove_workdir(self, host: remote.RemoteHost, launch: EngineLaunch) -> None:
        """Leave nothing of the batch on the machine (pool machines are reused); never raises:
        a directory left behind is logged, it must not fail a batch that has ended."""
        try:
            result = await host.remove_workdir(launch)
        except (RemoteError, OSError, asyncssh.Error) as exc:
            result = f"error: {exc}"
        if result in ("removed", "none"):
            log.info("work directory removed", extra=log_fields(**self._ids, result=result))
        else:
            log.warning("work directory not removed", extra=log_fields(**self._ids, result=result))

    async def close(self) -> None:
        """Close the connection (the engine keeps running)."""
        if self._host is not None:
            host, self._host = self._host, None
            await host.close()
