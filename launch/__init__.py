"""absl entry points: `python -m launch.<name> --config configs/<name>.py [--config.x=y]`.

Run them from the repository root (it puts the `configs` package on the import path).
"""
