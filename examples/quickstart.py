"""Speculative generation with the embedded pair, offline: the five-line API, then the statistics.

python examples/quickstart.py
"""

import torch

import specdec

target, draft, tokenizer = specdec.load_embedded_pair()
spec = specdec.wrap(target, draft, strategy="auto")
ids = tokenizer("def read_config(path):\n    ", return_tensors="pt").input_ids
out = spec.generate(ids, max_new_tokens=64)
print(tokenizer.decode(out[0], skip_special_tokens=True))
print(spec.stats.summary())

# Exactly what the target alone produces:
assert torch.equal(out, target.generate(ids, max_new_tokens=64, do_sample=False))

# Sampling follows the target's distribution; a generator makes it reproducible.
sampled = spec.generate(
    ids, max_new_tokens=32, do_sample=True, temperature=0.7, generator=torch.Generator().manual_seed(0)
)
print(tokenizer.decode(sampled[0, ids.shape[1] :]))
