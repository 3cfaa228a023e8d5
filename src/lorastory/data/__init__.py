"""The data stage: import, curate with Data-Juicer-format recipes, export for training."""
