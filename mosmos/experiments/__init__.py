"""Runs on generated data that need no downloads: the demo (demo), the pre-training study (study), and the
tiny fine-tuning recipes they and the tests train with (recipes)."""
