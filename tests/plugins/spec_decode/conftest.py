from __future__ import annotations

# the server fixtures (a fake backend and an app client) for test_server_options.py
from tests.server.conftest import backend, make_client  # noqa: F401

CODE = '''def compute_total(items, tax_rate):
    subtotal = 0
    for item in items:
        subtotal += item.price * item.quantity
    tax = subtotal * tax_rate
    return subtotal + tax
'''

PARAGRAPH = ("The city council met on Tuesday to discuss the new park. The park will have a playground, a "
             "pond, and a small garden. Construction will start in March and finish in September.")

# prompts whose answers copy from the prompt (drafts get accepted) and ordinary chat (they mostly do not)
PROMPTS = [
    "Rename the variable `subtotal` to `base` in this code and output the full updated code:\n\n" + CODE,
    "Copy the following paragraph exactly, word for word:\n\n" + PARAGRAPH,
    "What is the capital of France?",
    "Write a haiku about the sea.",
]


def chat(engine, text: str) -> list[int]:
    return engine.tokenizer.tokenize_chat([{"role": "user", "content": text}])
