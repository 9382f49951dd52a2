"""Training, episodic evaluation, checkpoints, device and distributed helpers."""
