"""Training: objective, optimisation, checkpoints, distributed set-up and the training loop."""
