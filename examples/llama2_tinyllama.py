"""Llama-2-7B with a TinyLlama draft on a GPU (needs the checkpoints; Llama-2 is gated on the Hub).

python examples/llama2_tinyllama.py
"""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import specdec

TARGET = "meta-llama/Llama-2-7b-hf"
DRAFT = "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"

tokenizer = AutoTokenizer.from_pretrained(TARGET)
target = AutoModelForCausalLM.from_pretrained(TARGET, dtype=torch.bfloat16, device_map="cuda")
draft = AutoModelForCausalLM.from_pretrained(DRAFT, dtype=torch.bfloat16, device_map="cuda")

spec = specdec.wrap(
    target, draft, strategy="auto", tokenizer=tokenizer, draft_tokenizer=AutoTokenizer.from_pretrained(DRAFT)
)
ids = tokenizer("Speculative decoding works because", return_tensors="pt").input_ids.to("cuda")
out = spec.generate(ids, max_new_tokens=128)
print(tokenizer.decode(out[0], skip_special_tokens=True))
print(spec.stats.summary())
