"""Lambda Cloud API v1 simulator; see ``neobatch.sim.lambda_cloud.server``."""

from neobatch.sim.lambda_cloud.server import LambdaSim, start_lambda_sim

__all__ = ["LambdaSim", "start_lambda_sim"]
