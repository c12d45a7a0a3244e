"""conceptfix: augment."""
