"""conceptfix: recipes."""
