"""Model runners and loading (layer L3)."""
