"""The GPU worker: an arq worker with Stable Diffusion 1.5 resident.

Keep this file torch-free: the bot imports ``gpu_worker.contract``, which imports this package first.
"""
