"""Write the builtin demo dataset ``arith-prefs`` (deterministic; run once, output committed).

    python -m prefpilot.data.make_builtin

Arithmetic and factual questions; ``chosen`` is the correct short answer and
``rejected`` a plausible wrong one (an off-by-one or carry slip, a neighbouring
country's capital). Written by this project for the demo and the tests.
"""
import json
import random
from pathlib import Path

FACTS = [
    ("What is the capital of France?", "Paris", "Lyon"), ("What is the capital of Germany?", "Berlin", "Munich"),
    ("What is the capital of Italy?", "Rome", "Milan"), ("What is the capital of Spain?", "Madrid", "Barcelona"),
    ("What is the capital of Japan?", "Tokyo", "Osaka"), ("What is the capital of Canada?", "Ottawa", "Toronto"),
    ("What is the capital of Australia?", "Canberra", "Sydney"), ("What is the capital of Brazil?", "Brasília", "Rio de Janeiro"),
    ("What is the capital of Turkey?", "Ankara", "Istanbul"), ("What is the capital of Switzerland?", "Bern", "Zurich"),
    ("What is the capital of Egypt?", "Cairo", "Alexandria"), ("What is the capital of Kenya?", "Nairobi", "Mombasa"),
    ("What is the capital of Norway?", "Oslo", "Bergen"), ("What is the capital of Portugal?", "Lisbon", "Porto"),
    ("What is the capital of Poland?", "Warsaw", "Kraków"), ("What is the capital of India?", "New Delhi", "Mumbai"),
    ("What is the capital of China?", "Beijing", "Shanghai"), ("What is the capital of Morocco?", "Rabat", "Casablanca"),
    ("What is the capital of Vietnam?", "Hanoi", "Ho Chi Minh City"), ("What is the capital of New Zealand?", "Wellington", "Auckland"),
    ("What is the chemical symbol for gold?", "Au", "Ag"), ("What is the chemical symbol for iron?", "Fe", "Ir"),
    ("What is the chemical symbol for sodium?", "Na", "So"), ("What is the chemical symbol for potassium?", "K", "P"),
    ("How many legs does a spider have?", "8", "6"), ("How many continents are there?", "7", "6"),
    ("How many days are in a leap year?", "366", "365"), ("How many minutes are in an hour?", "60", "100"),
    ("What planet is closest to the Sun?", "Mercury", "Venus"), ("What is the largest planet in the Solar System?", "Jupiter", "Saturn"),
    ("What gas do plants take in for photosynthesis?", "Carbon dioxide", "Oxygen"), ("At what temperature in Celsius does water boil at sea level?", "100", "90"),
    ("What is the freezing point of water in Celsius?", "0", "32"), ("How many sides does a hexagon have?", "6", "8"),
    ("How many sides does a pentagon have?", "5", "6"), ("What is the square root of 81?", "9", "8"),
    ("Who wrote 'Romeo and Juliet'?", "William Shakespeare", "Charles Dickens"), ("What is the largest ocean on Earth?", "The Pacific Ocean", "The Atlantic Ocean"),
    ("What is the hardest natural substance?", "Diamond", "Quartz"), ("How many bones are in the adult human body?", "206", "212"),
]


def arithmetic(rng: random.Random, n: int):
    out = []
    while len(out) < n:
        op = rng.choice("+-*")
        a, b = (rng.randint(2, 99), rng.randint(2, 99)) if op != "*" else (rng.randint(2, 19), rng.randint(2, 12))
        if op == "-" and b > a:
            a, b = b, a
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        wrong = value + rng.choice([-10, -2, -1, 1, 2, 10]) if op != "*" else value + rng.choice([-a, a, -1, 1, b])
        if wrong == value or wrong < 0:
            continue
        sym = {"+": "+", "-": "-", "*": "×"}[op]
        out.append({"prompt": f"What is {a} {sym} {b}? Answer with the number only.",
                    "chosen": str(value), "rejected": str(wrong)})
    return out


# tone-prefs: a direct answer is preferred over a dismissive non-answer. Train and test use disjoint
# prompts *and* disjoint non-answer phrasings, so held-out accuracy measures a learnt preference, not recall.
DISMISSIVE_TRAIN = ["I don't know.", "Why don't you look it up yourself?", "That's not my problem.",
                    "Figure it out on your own.", "I'd rather not answer that.", "Ask someone else.",
                    "No idea, sorry.", "Whatever. It doesn't matter."]
DISMISSIVE_TEST = ["Not sure, go search the web.", "I can't be bothered with this question.",
                   "Look, I have no clue.", "You should know this already."]


def tone(rng: random.Random, arith_rows: list[dict]) -> tuple[list[dict], list[dict]]:
    questions = [(q, c) for q, c, _ in FACTS] + [(r["prompt"].replace(" Answer with the number only.", ""),
                                                  r["chosen"]) for r in arith_rows[:200]]
    rng.shuffle(questions)
    test_q, train_q = questions[:48], questions[48:]
    train = [{"prompt": q, "chosen": c if not c.isdigit() else f"The answer is {c}.",
              "rejected": rng.choice(DISMISSIVE_TRAIN)} for q, c in train_q]
    test = [{"prompt": q, "chosen": c if not c.isdigit() else f"The answer is {c}.",
             "rejected": rng.choice(DISMISSIVE_TEST)} for q, c in test_q]
    return train, test


# terse-prefs: the bare answer is preferred over the same answer wrapped in a sentence. SmolLM2-135M-Instruct
# prefers the wrapped form (held-out accuracy by its own log-probs: 0.08 summed, 0.00 per token), so a run has to
# reverse the model's preference, not confirm it. Train and test use disjoint prompts; the test wrapper is the
# model's own favourite phrasing, one of the training wrappers.
WRAP_TRAIN = ["The answer is {a}.", "It is {a}.", "That would be {a}.", "The correct answer is {a}.",
              "Sure! The answer is {a}.", "{a} is the answer."]
WRAP_TEST = ["The answer is {a}."]


def terse(rng: random.Random, tone_train: list[dict], tone_test: list[dict]) -> tuple[list[dict], list[dict]]:
    def bare(c: str) -> str:
        return c[len("The answer is "):-1] if c.startswith("The answer is ") else c

    def rows(part, wraps):
        return [{"prompt": r["prompt"], "chosen": bare(r["chosen"]),
                 "rejected": rng.choice(wraps).format(a=bare(r["chosen"]))} for r in part]
    return rows(tone_train, WRAP_TRAIN), rows(tone_test, WRAP_TEST)


def write(name: str, train: list[dict], test: list[dict]) -> None:
    here = Path(__file__).parent
    for split, part in (("train", train), ("test", test)):
        with open(here / f"{name}.{split}.jsonl", "w", encoding="utf-8") as fh:
            for r in part:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{name}: train {len(train)}, test {len(test)}")


def main():
    rng = random.Random(20261122)
    rows = arithmetic(rng, 380)
    rows += [{"prompt": q + " Answer briefly.", "chosen": c, "rejected": r} for q, c, r in FACTS]
    rng.shuffle(rows)
    seen, unique = set(), []
    for r in rows:
        if r["prompt"] not in seen:
            seen.add(r["prompt"])
            unique.append(r)
    test, train = unique[:64], unique[64:]
    write("arith-prefs", train, test)
    tone_train, tone_test = tone(random.Random(7), unique)
    write("tone-prefs", tone_train, tone_test)
    write("terse-prefs", *terse(random.Random(11), tone_train, tone_test))


if __name__ == "__main__":
    main()
