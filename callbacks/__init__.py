"""conceptfix: callbacks."""
