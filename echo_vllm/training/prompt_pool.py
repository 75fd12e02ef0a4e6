"""Training prompts for draft heads, from offline sources that are not the benchmark sets.

Four kinds, interleaved in a seeded order:
  reasoning  freshly seeded reasoning-gym tasks (gsm_symbolic with training seeds only, never
             the evaluation seed, plus other arithmetic / logic / word tasks)
  code       "write this function" prompts from the signatures and docstrings of Python
             standard-library functions (HumanEval's problems are not among them)
  chat       instruction prompts from templates over topic lists (writing, explanation,
             STEM and humanities, advice, role play), none of them an MT-Bench question, and
             extraction / summary requests over standard-library documentation text
  sharegpt   the first user turn of real ShareGPT conversations (the prompt only: the target
             writes the answer)

`training_prompts` refuses to return a prompt that also appears in a benchmark set.
"""

from __future__ import annotations

import importlib
import inspect
import random
import re

from echo_vllm.assets.prompts import DATASETS, EVAL_SEED, load_prompts
from echo_vllm.assets.sharegpt import Exchange, first_exchanges

REASONING_TASKS = (
    "gsm_symbolic", "basic_arithmetic", "chain_sum", "leg_counting", "family_relationships",
    "letter_counting", "number_sorting", "word_sorting", "spell_backward", "simple_equations",
    "time_intervals", "calendar_arithmetic", "fraction_simplification", "gcd", "syllogism",
    "sentence_reordering",
)
STDLIB_MODULES = (
    "string", "textwrap", "itertools", "functools", "collections", "heapq", "bisect", "math",
    "statistics", "random", "json", "re", "os.path", "shutil", "pathlib", "datetime", "calendar",
    "operator", "copy", "difflib", "fnmatch", "glob", "html", "base64", "binascii", "hashlib",
    "zlib", "csv", "urllib.parse", "ipaddress", "fractions", "decimal", "secrets", "uuid",
    "shlex", "keyword", "colorsys", "struct", "gzip", "tempfile",
)
CHAT_TEMPLATES = (  # the kinds of request a general assistant gets, none an MT-Bench question
    # writing
    "Write a short blog post about {topic}.",
    "Write a friendly email to a colleague about {topic}.",
    "Write a short poem about {topic}.",
    "Write a persuasive paragraph arguing that everyone should learn about {topic}.",
    "Write a short story in which {topic} plays an important part.",
    "Draft a catchy product announcement for a new app about {topic}.",
    # explanation, STEM and humanities
    "Explain {topic} to a complete beginner.",
    "What is the science behind {topic}?",
    "How has {topic} changed society over the last hundred years?",
    "Summarize the history of {topic} in a few paragraphs.",
    "What are common misconceptions about {topic}?",
    "Discuss the ethical questions raised by {topic}.",
    # advice and planning
    "Give me five practical tips about {topic}.",
    "What are the main advantages and disadvantages of {topic}?",
    "Compare {topic} with a common alternative and recommend one.",
    "Create a step-by-step plan for learning about {topic}.",
    "What questions should I ask an expert in {topic}?",
    # role play
    "Pretend you are a tour guide and describe {topic}.",
    "Act as a teacher and give a five-minute lesson on {topic}.",
    "You are a journalist interviewing a scientist about {topic}. Write the interview.",
    "Describe a typical day for someone who works with {topic}.",
)
CHAT_TOPICS = (
    "renewable energy", "urban gardening", "the Roman Empire", "machine learning", "coffee brewing",
    "public transportation", "marathon training", "the water cycle", "jazz music", "photography",
    "personal budgeting", "volcanoes", "remote work", "chess openings", "bird migration",
    "electric cars", "the printing press", "healthy sleep habits", "recycling", "space telescopes",
    "baking bread", "the stock market", "learning a new language", "climate change", "honeybees",
    "ancient Egypt", "cybersecurity", "yoga", "the human heart", "board games", "solar panels",
    "mountain hiking", "3D printing", "time management", "coral reefs", "the Renaissance",
    "video game design", "vaccines", "minimalism", "public speaking", "the moon landing",
    "composting", "cloud computing", "origami", "the Olympic Games", "tea ceremonies",
    "electric guitars", "wildfire prevention", "podcasting", "the periodic table",
    "black holes", "the French Revolution", "antibiotics", "social media", "plate tectonics",
    "democracy", "quantum computing", "the Silk Road", "nutrition labels", "wind turbines",
    "impressionist painting", "the immune system", "smartphones", "rainforests", "philosophy of mind",
    "supply chains", "ocean tides", "the Industrial Revolution", "meditation", "electric grids",
    "dinosaurs", "inflation", "the internet", "classical music", "genetic engineering",
)
MEMORY_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
EXTRACTION_TEMPLATES = (  # documentation text to read, summarize or extract from
    "Summarize the following documentation in two sentences:\n\n{text}",
    "List the key facts stated in this text as bullet points:\n\n{text}",
    "Rewrite this technical description in plain English for a non-programmer:\n\n{text}",
)


def _reasoning(count: int, seed: int) -> list[str]:
    import reasoning_gym

    if seed == EVAL_SEED:
        raise ValueError(f"echo-vllm: seed {seed} is the gsm8k evaluation seed; pick another")
    per_task = -(-count // len(REASONING_TASKS))
    prompts = []
    for i, task in enumerate(REASONING_TASKS):
        data = reasoning_gym.create_dataset(task, seed=seed * 1000 + i, size=per_task)
        prompts += [item["question"] for item in data]
    return prompts


def _documented_functions():
    """(qualified name, signature, docstring summary) of documented standard-library
    functions and public methods of their classes."""
    for module_name in STDLIB_MODULES:
        module = importlib.import_module(module_name)
        for name, member in sorted(vars(module).items()):
            if name.startswith("_"):
                continue
            if inspect.isclass(member) and member.__module__ == module.__name__:
                candidates = [(f"{name}.{m}", f) for m, f in sorted(vars(member).items())
                              if not m.startswith("_") and inspect.isfunction(f)]
            elif inspect.isfunction(member):
                candidates = [(name, member)]
            else:
                continue
            for qualified, function in candidates:
                doc = inspect.getdoc(function)
                try:
                    signature = inspect.signature(function)
                except (TypeError, ValueError):
                    continue
                if doc and len(doc) > 40:
                    yield f"{module_name}.{qualified}", signature, doc.split("\n\n")[0]


def _code() -> list[str]:
    prompts = []
    for qualified, signature, summary in _documented_functions():
        name = qualified.rsplit(".", 1)[1]
        # a default such as <function copy2 at 0x7f...> differs per process: drop the address
        # so that the prompts (and the work directory they key) are the same in every run
        signature = MEMORY_ADDRESS.sub("", str(signature))
        prompts.append(
            f"Write a Python function `{name}{signature}` that does the following:\n"
            f"{summary}\nInclude a docstring and a short usage example."
        )
        prompts.append(f"Explain what `{qualified}` does in Python and show an example of using it.")
    return prompts


def _chat() -> list[str]:
    chat = [t.format(topic=topic) for t in CHAT_TEMPLATES for topic in CHAT_TOPICS]
    docs = [summary for _, _, summary in _documented_functions()]
    return chat + [t.format(text=doc) for t in EXTRACTION_TEMPLATES for doc in docs]


# ShareGPT turns longer than this (characters) leave too little of the context for an answer
SHAREGPT_MAX_PROMPT_CHARS = 1500


def _sharegpt(seed: int) -> list[Exchange]:
    """ShareGPT's first exchanges with a short enough user turn, in a seeded order."""
    exchanges = [e for e in first_exchanges() if len(e.prompt) <= SHAREGPT_MAX_PROMPT_CHARS]
    random.Random(seed).shuffle(exchanges)
    return exchanges


def training_prompts(count: int, seed: int = 0) -> list[str]:
    """`count` training prompts, about a quarter of each kind (code, chat and ShareGPT prompts
    are finite; reasoning tasks fill what they lack), in a seeded order. Deterministic for
    (count, seed)."""
    rng = random.Random(seed)
    code, chat = _code(), _chat()
    rng.shuffle(code)
    rng.shuffle(chat)
    share = -(-count // 4)
    fixed = code[:share] + chat[:share] + [e.prompt for e in _sharegpt(seed)[:share]]
    # generated tasks can repeat a question: draw with slack, keep each prompt once
    reasoning = list(dict.fromkeys(_reasoning(2 * (count - len(fixed)) + 16, seed + 1)))
    rng.shuffle(reasoning)  # every task, not just the first ones, in what is kept
    pool = list(dict.fromkeys(fixed + reasoning))[:count]
    rng.shuffle(pool)
    benchmark = {p.text for name in DATASETS for p in load_prompts(name)}
    overlap = [p for p in pool if p in benchmark]
    if overlap:
        raise AssertionError(f"training prompts overlap a benchmark set: {overlap[:3]}")
    return pool[:count]


def answered_exchanges(count: int, exclude: list[str], seed: int = 0) -> list[Exchange]:
    """`count` ShareGPT exchanges whose answers the dataset gives (the target does not write
    them), none whose user turn is in `exclude` (the prompts the target answers) or in a
    benchmark set."""
    excluded = set(exclude) | {p.text for name in DATASETS for p in load_prompts(name)}
    chosen = [e for e in _sharegpt(seed + 1) if e.prompt not in excluded][:count]
    if len(chosen) < count:
        raise ValueError(f"echo-vllm: ShareGPT has {len(chosen)} usable exchanges, {count} were asked for")
    return chosen
