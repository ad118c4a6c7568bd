"""The benchmarks behind ``./task bench:dispatch`` (``dispatch/``) and ``./task bench:control-plane``
(``control_plane``). They print figures; nothing here is asserted except by their smoke tests."""
