"""The shipped default pair: its loader and the corpus tables its prompts come from."""
