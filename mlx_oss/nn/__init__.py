"""The network as pure MLX math: config in, logits out; no backend knobs, no chunk loop (see docs/ARCHITECTURE.md)."""
