#!/usr/bin/env python3
"""`ember serve` against the official `openai` Python client (from PyPI).

Usage: python3 serve_openai.py BASE_URL API_KEY   (BASE_URL like http://127.0.0.1:PORT/v1)

Run by .ci/serve.sh against a tiny model. Checks: chat and completion, streaming and not,
stop strings, seeds (same seed, same text), greedy streaming == greedy non-streaming, logprobs,
usage, the models list, that bad requests and a wrong key raise the client's typed errors, and
`response_format` json_schema answers that validate (also through the client's pydantic `parse()`).
Skips LOUDLY (exit 0) when the `openai` package is missing.
"""

import sys

try:
    import openai
except ImportError:
    print("#" * 64, file=sys.stderr)
    print("## serve_openai.py: SKIPPED: the `openai` package is not installed", file=sys.stderr)
    print("## (pip install openai; NOTHING was checked)", file=sys.stderr)
    print("#" * 64, file=sys.stderr)
    sys.exit(0)


def main():
    base, key = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=60)
    models = client.models.list()
    model = models.data[0].id
    print(f"model {model!r}, openai {openai.__version__}")

    # Chat, not streamed.
    msgs = [{"role": "user", "content": "Say something."}]
    r = client.chat.completions.create(model=model, messages=msgs, max_tokens=12, temperature=0)
    answer = r.choices[0].message.content
    assert r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens >= 1 and r.usage.prompt_tokens >= 1, r.usage
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.choices[0].finish_reason in ("stop", "length")

    # Chat, streamed: the same greedy text, and a usage chunk when asked.
    stream = client.chat.completions.create(
        model=model, messages=msgs, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True})
    pieces, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(pieces) == answer, ("".join(pieces), answer)
    assert usage is not None and usage.completion_tokens == r.usage.completion_tokens
    assert finish == r.choices[0].finish_reason

    # Completion, not streamed and streamed.
    c = client.completions.create(model=model, prompt="Once upon a time", max_tokens=16, temperature=0)
    text = c.choices[0].text
    s = client.completions.create(model=model, prompt="Once upon a time", max_tokens=16,
                                  temperature=0, stream=True)
    assert "".join(ch.choices[0].text for ch in s if ch.choices) == text

    # A stop string from the middle of the greedy text: the answer ends just before it.
    if len(text) >= 6:
        stop = text[3:6]
        cut = client.completions.create(model=model, prompt="Once upon a time", max_tokens=16,
                                        temperature=0, stop=[stop])
        assert cut.choices[0].text == text[: text.find(stop)], (cut.choices[0].text, text, stop)
        assert cut.choices[0].finish_reason == "stop"

    # Seeds: the same seed gives the same sampled text.
    def sampled(seed):
        return client.completions.create(model=model, prompt="Once upon a time", max_tokens=16,
                                         temperature=1.0, top_p=0.95, seed=seed).choices[0].text
    assert sampled(42) == sampled(42)

    # Logprobs on chat.
    lp = client.chat.completions.create(model=model, messages=msgs, max_tokens=3, temperature=0,
                                        logprobs=True, top_logprobs=2)
    content = lp.choices[0].logprobs.content
    assert len(content) >= 1 and all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)

    # Errors: typed by the client, the field named.
    try:
        client.chat.completions.create(model=model, messages=msgs, temperature=5)
        raise AssertionError("temperature 5 was accepted")
    except openai.BadRequestError as e:
        assert e.body and e.body.get("param") == "temperature", e.body
    try:
        client.chat.completions.create(model=model, messages=msgs, n=2)
        raise AssertionError("n=2 was accepted")
    except openai.BadRequestError as e:
        assert e.body.get("param") == "n", e.body
    bad = openai.OpenAI(base_url=base, api_key="wrong-" + key, max_retries=0)
    try:
        bad.models.list()
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError:
        pass
    check_json_schema(client, model)
    print("serve_openai.py: every check passed")


def check_json_schema(client, model):
    """`response_format` json_schema: answers that close parse and validate (with the
    `jsonschema` package when installed), and the client's own pydantic `parse()` path works."""
    import json

    schema = {"type": "object", "properties": {
        "unit": {"enum": ["celsius", "fahrenheit"]}, "temp": {"type": "integer"},
        "rain": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
        "hours": {"type": "array", "items": {"type": "integer"}, "maxItems": 3}},
        "required": ["unit", "temp", "rain", "hours"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": schema, "strict": True}}
    try:
        import jsonschema
    except ImportError:
        jsonschema = None
        print("!! jsonschema is not installed: json_schema answers are parsed, NOT validated")
    closed = 0
    for seed in range(6):
        r = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Weather?"}], max_tokens=100,
            temperature=1.0, seed=seed, response_format=fmt)
        c = r.choices[0]
        if c.finish_reason == "stop":
            closed += 1
            v = json.loads(c.message.content)
            if jsonschema:
                jsonschema.validate(v, schema)
            else:
                assert sorted(v) == ["hours", "rain", "temp", "unit"], v
        else:
            assert c.finish_reason == "length", c.finish_reason
            print("cut:", repr(c.message.content))
    assert closed >= 3, f"only {closed} of 6 json_schema answers closed"
    try:
        from typing import Literal, Optional
        from pydantic import BaseModel, Field
    except ImportError:
        print("!! pydantic is not installed: the client's parse() path was NOT checked")
        return

    class Weather(BaseModel):
        unit: Literal["celsius", "fahrenheit"]
        temp: int
        rain: Optional[bool]
        hours: list[int] = Field(max_length=3)

    for seed in range(6):
        try:
            r = client.chat.completions.parse(
                model=model, messages=[{"role": "user", "content": "Weather?"}], max_tokens=100,
                temperature=1.0, seed=seed, response_format=Weather)
        except openai.LengthFinishReasonError:
            continue
        w = r.choices[0].message.parsed
        assert isinstance(w, Weather), w
        print(f"parse() gave {w!r}")
        return
    raise AssertionError("no parse() answer closed in 6 seeds")


if __name__ == "__main__":
    main()
