"""RunPod REST v2 simulator; see ``neobatch.sim.runpod.server``."""

from neobatch.sim.runpod.server import RunPodSim, start_runpod_sim

__all__ = ["RunPodSim", "start_runpod_sim"]
