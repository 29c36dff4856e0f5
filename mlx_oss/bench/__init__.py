"""`mlx-oss bench`: our engine beside a peer (mlx-lm) from one run, with the machine it ran on."""
