"""Checkpoint conversion: Hugging Face / OpenAI original layouts -> mlx-oss folders."""
