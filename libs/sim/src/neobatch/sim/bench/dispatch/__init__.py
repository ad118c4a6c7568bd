"""`task bench:dispatch`: the runtime-agent's dispatch path against a nearly free engine.

The engine is nginx with the echo module (Debian's `nginx-light` + `libnginx-mod-http-echo`,
installed with apt-get when missing): `/v1/chat/completions` answers a fixed chat.completion
body after 20 ms (`echo_sleep 0.02`), `/health` answers 200. Its cost is a few microseconds
per request, so what is measured is the client side.

1. Throughput — the same N requests (default 20,000), concurrency 256:
   * direct: a minimal asyncio + aiohttp load generator straight to nginx;
   * agent: a real batch through the runtime-agent, in its own process: input file in
     GridFS (SecantusDB process), validation, SSH connect to a loopback SSH host (a separate
     process: OpenSSH's sshd, what a rented GPU machine runs, when installed (`--ssh auto`);
     else, or with `--ssh sim`, the `neobatch.sim.ssh_host` asyncssh server), the engine
     launched by the template's `command` over SSH, the agent's SSH tunnel (an `ssh -L`
     child with a unix socket), the EngineClient (engine_http), CheckpointWriter into
     `batch_results`
     and the output file assembled into GridFS. The rate is requests / the run's
     `dispatch_seconds` (dispatch + checkpoints; the output file time is printed apart).
   * for scale: the agent's HTTP client (engine_http) straight to nginx, and the same
     client through the agent's own SSH connection and tunnel
     alone (`remote.connect` + `forward`: OpenSSH's `ssh -L` to a unix socket when `ssh`
     is installed, as the agent uses it, else asyncssh's forward).
   Rounds (`--rounds`, default 3) interleave them, since a shared machine's load moves the
   rates; the round with the median ratio is the figure, and each path's client CPU per
   request is printed beside it (steadier than the rates).
2. Memory — peak RSS (VmHWM) of the agent process for a 50,000-request ~200 MB input vs a
   1,000-request input with the same line size.
   Then oversize answers: the engine simulator answering 10% of 1,000 requests with 50 MB
   bodies (`--oversize-rate`), by Content-Length and chunked, beside the same batch answered
   normally: the agent's peak RSS must stay flat (the response cap, NEOBATCH_MAX_RESPONSE_BYTES,
   refuses or cuts them off) and exactly those lines end as `response_too_large`.

Modules: ``nginx`` (the engine), ``load`` (input and the load generators), ``agent`` (a batch
through a real agent in a child process), ``rig`` (database and SSH host), ``measure`` and
``report``; ``__main__`` ties them together.

    python -m neobatch.sim.bench.dispatch [--only throughput|memory] [--requests N]
        [--oversize-requests N] [--oversize-rate R]
        [--rounds R] [--ssh auto|sim|openssh] [--profile FILE (py-spy)] [--keep]
"""

from __future__ import annotations
