"""Run records, one place each: results.json (results.py: one schema, written and read here only),
checkpoints (checkpoints.py: written atomically, read by one reader), the loggers (loggers.py:
wandb and CSV, and what goes to wandb), and the tables a job prints (console.py)."""
