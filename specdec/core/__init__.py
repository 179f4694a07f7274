"""The algorithm: trees, processors per node, acceptance rules, the batch-first step, the generation loop."""
