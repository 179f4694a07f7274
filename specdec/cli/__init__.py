"""The `specdec` command: demo, generate, bench."""
