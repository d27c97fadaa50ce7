"""The trainer: reads purchase sources, merges them, fits models and publishes bundles."""
