"""Backend-specific layouts and facts: Metal (device.py) and the CPU backend (cpu.py), swapped in by class."""
