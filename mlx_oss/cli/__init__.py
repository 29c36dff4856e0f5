"""The `mlx-oss` command line: a dispatcher (main.py), shared flags (args.py) and one module per subcommand."""
