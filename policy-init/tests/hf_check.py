"""Loads a ponder export with Hugging Face transformers and prints the logits of the given ids.

usage: python3 hf_check.py EXPORT_DIR 1,40,52,...
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32)
model.eval()
ids = torch.tensor([[int(i) for i in sys.argv[2].split(",")]])
with torch.no_grad():
    logits = model(ids).logits[0]
json.dump(logits.flatten().tolist(), sys.stdout)
