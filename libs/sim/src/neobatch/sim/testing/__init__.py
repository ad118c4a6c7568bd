"""Test support: what the pytest plugin, the tests, the local stack and the benches run things with.

``servers`` (free ports, nats-server, SecantusDB and ``python -m`` modules as subprocesses),
``backends`` (the session's NATS and MongoDB: from the environment, Docker or a subprocess),
``background`` (an event loop on a thread for in-process simulators) and ``waiting``
(``wait_until``). Nothing here imports pytest; the fixtures are in ``neobatch.sim.pytest_plugin``.
"""
