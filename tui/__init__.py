"""The Textual chat app behind `mlx-oss chat`."""
