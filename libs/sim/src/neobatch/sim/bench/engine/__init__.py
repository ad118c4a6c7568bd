"""``task bench:engine``: neobatch against a REAL vLLM OpenAI server (vLLM's CPU build, the tiny
model of ``neobatch.sim.real_engine``), printing three tables.

(a) dispatch — N chat requests (``--requests``, default 5,000; ``--max-tokens`` 32, ignore_eos)
    against one engine: a direct asyncio + aiohttp sweep (``--sweep`` 8…512 in flight), then the
    same input as a neobatch batch through a real runtime-agent in its own process (SSH host,
    tunnel, checkpoints, output file) dispatching to the same engine, with the agent's settings
    as deployed (``--agent-env NAME=VALUE`` changes them) and no job ``client`` block, plus one
    run per ``--agent-client JSON``. neobatch's rate is the agent's own "dispatch ended" log line
    (``requests_per_second``); the table gives each as % of the best direct rate.
(b) run_batch — the same input through ``python -m vllm.entrypoints.openai.run_batch`` (what a
    user with one machine would run; wall time with its start-up) against neobatch's whole job
    (upload to completed) on the local stack with PROVISIONER=runpod, the pod's ``vllm serve``
    reaching the real engine; the ratio is printed.
(c) prefix — ``--prefix-requests`` requests over ``--prompts`` (20) distinct ~300-token system
    prompts, shuffled: cached prompt tokens (vLLM's ``usage.prompt_tokens_details``, the engine
    runs with the switches every neobatch launch adds: ``--enable-prefix-caching
    --enable-prompt-tokens-details --disable-uvicorn-access-log``) and req/s, for the
    direct client in input order and grouped by prompt (what prefix-aware ordering could reach),
    and for neobatch as it dispatches today; ``--agent-env-variant NAME=VALUE`` adds a neobatch
    run with other settings (e.g. a prefix-ordering switch, to compare against input order).
    Each run gets its own prompts, so no run reads another's cache. The CPU engine's KV cache
    (0.15 of the machine's memory, ~1 KB a token for this model) holds every prompt, so order
    changes nothing there (measured: 148,480 of 220,180 prompt tokens cached, the ideal, in every
    order); ``--engine-arg=--num-gpu-blocks-override --engine-arg=N`` shrinks it to where it does.

Modules: ``workload`` (inputs, the direct client), ``agent`` (a batch through a real agent),
``measure`` (the engine process, the three measurements, their tables).
"""
