"""Drives `ponder serve` with the official `openai` client (run by tests/serve.rs).

Usage: openai_client.py BASE_URL MODEL PROBLEM. Prints one JSON line: the answers and the
reasoning tokens per effort, and the answer streamed at medium effort.
"""

import json
import sys

import openai

base_url, model, problem = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)

assert model in [m.id for m in client.models.list().data]

report = {"answers": {}, "reasoning_tokens": {}}
for effort in ["low", "medium", "high"]:
    completion = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": problem}],
        reasoning_effort=effort,
        seed=5,
        max_completion_tokens=4000,
    )
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    report["answers"][effort] = choice.message.content
    report["reasoning_tokens"][effort] = completion.usage.completion_tokens_details.reasoning_tokens

stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": problem}],
    reasoning_effort="medium",
    seed=5,
    max_completion_tokens=4000,
    stream=True,
)
report["streamed"] = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": problem}])
    raise SystemExit("an unknown model was accepted")
except openai.NotFoundError as e:
    assert e.status_code == 404

print(json.dumps(report))
