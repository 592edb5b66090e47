"""Fine-tuning machinery behind ``python -m wdiv.train``."""
