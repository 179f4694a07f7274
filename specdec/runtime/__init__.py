"""Running models incrementally over KV caches: specdec's Llama-layout runner, transformers' forward."""
