"""Models: adapters that turn a checkpoint or a built-in name into a Denoiser."""
