"""The prompts of `tessera bench spec`, one list per workload: copy/edit tasks whose answers repeat the
prompt (copy_b1), best-of-N tasks (best_of_4) and ordinary chat (chat_c64, judge). Kept apart so the
benchmark module holds only the measurement."""

from __future__ import annotations

COPY_CODE = '''def compute_total(items, tax_rate):
    subtotal = 0
    for item in items:
        subtotal += item.price * item.quantity
    tax = subtotal * tax_rate
    total = subtotal + tax
    return total


def format_receipt(items, tax_rate):
    lines = []
    for item in items:
        lines.append(f"{item.name}: {item.price * item.quantity:.2f}")
    lines.append(f"Total: {compute_total(items, tax_rate):.2f}")
    return "\\n".join(lines)
'''
COPY_DOC = ("The city council met on Tuesday to discuss the new park. The park will have a playground, a pond, "
            "and a small garden. Construction will start in March and finish in September. The council voted "
            "five to two in favor of the plan. Residents can send comments to the council office until February.")
COPY_CODE_2 = '''def load_users(path):
    users = []
    with open(path) as handle:
        for line in handle:
            name, email, age = line.strip().split(",")
            users.append({"name": name, "email": email, "age": int(age)})
    return users


def adults(users):
    return [user for user in users if user["age"] >= 18]
'''
COPY_DOC_2 = ("Our team finished the first version of the mobile app last week. Users can now create an account, "
              "save their favorite recipes, and share shopping lists with friends. The next release will add "
              "offline mode and a dark theme. Please report any bugs to the support team by Friday.")
# distinct prompts per repeat: the suffix proposer's window of recent requests must not have seen the
# same prompt answered before
COPY_PROMPTS = [
    "Rename the variable `subtotal` to `base_amount` in this code and output the full updated code:\n\n" + COPY_CODE,
    "Copy the following paragraph exactly, word for word:\n\n" + COPY_DOC,
    "Rename the function `adults` to `grown_ups` in this code and output the full updated code:\n\n" + COPY_CODE_2,
    "Repeat this text exactly as written:\n\n" + COPY_DOC_2,
    "Rewrite this code with the function `format_receipt` renamed to `render_receipt`. Output all of "
    "the code:\n\n" + COPY_CODE,
    "Repeat this text exactly as written:\n\n" + COPY_DOC.replace("park", "library"),
    "Rename the variable `users` to `people` in this code and output the full updated code:\n\n" + COPY_CODE_2,
    "Copy the following paragraph exactly, word for word:\n\n" + COPY_DOC_2.replace("mobile app", "website"),
]
CHAT_PROMPTS = [
    "Explain how a bicycle works.", "Write a short story about a lost key.", "Describe the water cycle.",
    "Give me tips for a job interview.", "What are the benefits of exercise?", "Explain what a compiler does.",
    "Describe your favorite season and why.", "How do plants grow?", "What makes a good friend?",
    "Explain how rain forms.", "Write a short poem about the moon.", "How does a refrigerator work?",
]

# best-of-N as it is used: short code and math answers (where a verifier or a vote picks the best
# sample) mixed with ordinary chat; all distinct, so no request's answer was seen before
BEST_OF_PROMPTS = [
    "Write a Python function that checks whether a string is a palindrome.",
    "What is 15% of 240? Show your steps.",
    "Explain how a bicycle works.",
    "Write a Python function that returns the factorial of n.",
    "Solve for x: 3x + 7 = 22. Show your steps.",
    "Write a short story about a lost key.",
    "Write a Python function that counts the vowels in a string.",
    "A train travels 180 km in 3 hours. What is its average speed? Show your work.",
    "Describe the water cycle.",
    "Write a Python function that reverses a list without using reverse().",
    "What is the sum of the first 10 positive integers? Explain briefly.",
    "Give me tips for a job interview.",
    "Write a Python function that returns the largest number in a list.",
    "A shirt costs $25 and is on sale for 20% off. What is the sale price? Show your steps.",
    "What are the benefits of exercise?",
    "Write a Python function that checks whether a number is prime.",
    "What is the area of a rectangle 7 cm long and 4 cm wide? Show your work.",
    "Explain what a compiler does.",
]
