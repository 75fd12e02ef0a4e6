"""A client for examples/serve.sh: one streamed chat answer, then 16 concurrent chat answers.

    .venv/bin/python examples/client.py [--url http://127.0.0.1:8000]
"""

from __future__ import annotations

import argparse
import asyncio

from openai import AsyncOpenAI, OpenAI

MODEL = "smollm2-135m"  # --served-model-name in serve.sh


async def concurrent_answers(url: str, questions: list[str]) -> list[str]:
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused")
    responses = await asyncio.gather(*(
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": q}], max_tokens=32,
                                       temperature=0) for q in questions))
    await client.close()
    return [r.choices[0].message.content for r in responses]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    args = parser.parse_args()

    client = OpenAI(base_url=f"{args.url}/v1", api_key="unused")
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Explain speculative decoding in two sentences."}],
        max_tokens=96, temperature=0, stream=True)
    for chunk in stream:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
    print()
    questions = [f"What is {i} times {i + 1}?" for i in range(16)]
    for question, answer in zip(questions, asyncio.run(concurrent_answers(args.url, questions))):
        print(f"{question} -> {answer!r}")


if __name__ == "__main__":
    main()
