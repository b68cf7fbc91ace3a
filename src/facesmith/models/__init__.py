"""Model sources: loading diffusers folders, single-file checkpoints and LoRAs, all offline."""
