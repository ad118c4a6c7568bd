"""What the cloud-provider simulators (``runpod``, ``lambda_cloud``) share.

``sim`` (``CloudSim``: machines that are real SSH hosts, capacity, prices, faults, the recorded
exchanges; ``serve``), ``admin`` (the ``/_sim`` admin API), ``specs`` (the providers' OpenAPI
documents and a validator) and ``cli`` (``python -m neobatch.sim.runpod`` / ``lambda_cloud``).
"""
