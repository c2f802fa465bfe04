"""Model configs, MONAI networks and checkpoints."""
