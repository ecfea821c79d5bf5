"""Training: losses, the trainer (checkpoints, resume, logging, distributed) and the Hydra entry."""
