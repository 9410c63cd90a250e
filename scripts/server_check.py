#!/usr/bin/env python3
"""Checks a running examples/server with the official `openai` client.

    python3 scripts/server_check.py http://127.0.0.1:PORT

Run by scripts/server-check, which starts the server (SmolLM2-135M-Instruct,
`-np 4 -c 1024 -t 1 --embeddings`: 256 tokens per request, /v1/embeddings with
mean pooling). Exits non-zero, naming every failed check, when anything is wrong.
"""

import array
import base64
import json
import math
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai

BASE = sys.argv[1].rstrip("/")
client = openai.OpenAI(base_url=BASE + "/v1", api_key="none", max_retries=0, timeout=120)
failures = []
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


class CheckError(Exception):
    pass


def ensure(cond, message):
    if not cond:
        raise CheckError(message)


def check(name):
    def run(fn):
        t0 = time.monotonic()
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - every failure is reported
            failures.append(name)
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
        else:
            print(f"ok   {name} ({time.monotonic() - t0:.1f} s)", flush=True)
        return fn

    return run


def raw(method, path, body=None):
    """(status, parsed JSON) of a raw request: for what the client cannot send."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def health():
    status, h = raw("GET", "/health")
    ensure(status == 200 and h["status"] == "ok", f"/health answered {status} {h}")
    return h


def token_ids(choice):
    ids = (choice.model_extra or {}).get("token_ids")
    ensure(isinstance(ids, list), f"no token_ids in {choice}")
    return ids


def usage_ok(usage, n_tokens):
    ensure(usage is not None, "no usage")
    ensure(usage.prompt_tokens > 0, f"prompt_tokens = {usage.prompt_tokens}")
    ensure(usage.completion_tokens == n_tokens, f"completion_tokens {usage.completion_tokens} != {n_tokens} token ids")
    ensure(usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, f"total_tokens wrong: {usage}")


models = client.models.list().data
MODEL = models[0].id if models else None
state = {}


@check("GET /v1/models lists the model")
def _():
    ensure(len(models) == 1 and MODEL, f"models: {models}")
    meta = models[0].model_extra["meta"]
    ensure(meta["n_slots"] == 4 and meta["n_ctx_per_request"] >= 128, f"meta: {meta}")


@check("GET /health: every slot idle")
def _():
    h = health()
    ensure(h["slots_idle"] == h["slots_total"] == 4, f"{h}")


@check("chat, not streamed")
def _():
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=48)
    c = r.choices[0]
    ensure(r.object == "chat.completion" and c.message.role == "assistant", f"shape: {r}")
    ensure(c.message.content.strip(), "empty answer")
    ensure(c.finish_reason in ("stop", "length"), f"finish_reason {c.finish_reason}")
    ids = token_ids(c)
    usage_ok(r.usage, len(ids))
    state["chat"] = (c.message.content, ids)
    print(f"     answer: {c.message.content!r}")


@check("chat, greedy: the same prompt gives the same text twice")
def _():
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=48)
    text, ids = state["chat"]
    ensure(r.choices[0].message.content == text, f"{r.choices[0].message.content!r} != {text!r}")
    ensure(token_ids(r.choices[0]) == ids, "token ids differ")


@check("chat, streamed: chunks carry token ids, text concatenates to the same answer")
def _():
    stream = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        temperature=0,
        max_tokens=48,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, ids, finish, usage, n = "", [], None, None, 0
    for chunk in stream:
        ensure(chunk.object == "chat.completion.chunk", f"object {chunk.object}")
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            n += 1
            text += c.delta.content or ""
            ids += token_ids(c)
            finish = c.finish_reason or finish
    ensure(n >= 3, f"only {n} chunks")
    ensure((text, ids) == state["chat"], f"stream gave {text!r} {ids}, not {state['chat']}")
    ensure(finish in ("stop", "length"), f"finish_reason {finish}")
    usage_ok(usage, len(ids))


@check("completions, not streamed and streamed; max_tokens ends with 'length'")
def _():
    kw = dict(model=MODEL, prompt="Once upon a time", temperature=0, max_tokens=16)
    r = client.completions.create(**kw)
    c = r.choices[0]
    ensure(r.object == "text_completion" and c.text.strip(), f"response: {r}")
    ensure(c.finish_reason == "length", f"finish_reason {c.finish_reason}")
    ids = token_ids(c)
    ensure(len(ids) == 16, f"{len(ids)} token ids")
    usage_ok(r.usage, 16)
    state["completion"] = (c.text, ids)
    text, sids, finish = "", [], None
    for chunk in client.completions.create(stream=True, **kw):
        for ch in chunk.choices:
            text += ch.text
            sids += token_ids(ch)
            finish = ch.finish_reason or finish
    ensure((text, sids) == (c.text, ids), f"stream gave {text!r} {sids}, not {c.text!r} {ids}")
    ensure(finish == "length", f"stream finish_reason {finish}")


@check("completions: a prompt of token ids")
def _():
    _, ids = state["completion"]
    r = client.completions.create(model=MODEL, prompt=ids, temperature=0, max_tokens=8)
    ensure(r.usage.prompt_tokens == len(ids), f"prompt_tokens {r.usage.prompt_tokens} != {len(ids)}")
    ensure(len(token_ids(r.choices[0])) == 8, f"{r.choices[0]}")


@check("8 requests in parallel each get an answer")
def _():
    topics = ["cats", "the sea", "Rust", "bread", "music", "the moon", "trees", "trains"]

    def ask(i):
        r = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Write one sentence about {topics[i]}."}],
            temperature=0.7,
            seed=i,
            max_tokens=40,
        )
        return r.choices[0].message.content

    before = health()["requests_total"]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    empty = [i for i, a in enumerate(answers) if not a.strip()]
    ensure(not empty, f"empty answers for {empty}: {answers}")
    h = health()
    ensure(h["requests_total"] - before == 8, f"{h}")
    ensure(h["slots_idle"] == 4, f"slots still busy: {h}")


@check("logprobs: chat top_logprobs and completions logprobs in OpenAI's shapes")
def _():
    r = client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=12, logprobs=True, top_logprobs=3
    )
    c = r.choices[0]
    entries = c.logprobs.content
    ensure(len(entries) == len(token_ids(c)), f"{len(entries)} entries for {len(token_ids(c))} tokens")
    for e in entries:
        ensure(e.logprob <= 0 and len(e.top_logprobs) == 3, f"entry {e}")
        # Greedy: the sampled token is the most likely one.
        ensure(abs(e.top_logprobs[0].logprob - e.logprob) < 1e-4, f"greedy token not the top one: {e}")
        ensure(bytes(e.bytes).decode("utf-8", "replace") == e.token, f"bytes do not spell the token: {e}")
    plain = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=12)
    ensure(plain.choices[0].logprobs is None, "logprobs without asking")
    r = client.completions.create(model=MODEL, prompt="Once upon a time", temperature=0, max_tokens=6, logprobs=2)
    lp = r.choices[0].logprobs
    ensure(len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6, f"{lp}")
    ensure(all(x <= 0 for x in lp.token_logprobs) and all(len(t) <= 2 for t in lp.top_logprobs), f"{lp}")
    ensure(lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset), f"text_offset {lp.text_offset}")


@check("stop_token_ids and stop strings")
def _():
    text, ids = state["completion"]
    k = next(k for k in range(2, len(ids)) if ids[k] not in ids[:k])
    r = client.completions.create(
        model=MODEL, prompt="Once upon a time", temperature=0, max_tokens=16, extra_body={"stop_token_ids": [ids[k]]}
    )
    c = r.choices[0]
    ensure(c.finish_reason == "stop", f"finish_reason {c.finish_reason}")
    ensure(token_ids(c) == ids[: k + 1], f"token ids {token_ids(c)}, expected {ids[:k + 1]} (stop token last)")
    ensure(text.startswith(c.text) and len(c.text) < len(text), f"text {c.text!r} not a prefix of {text!r}")
    words = text.split()
    stop = " " + words[len(words) // 2]
    r = client.completions.create(model=MODEL, prompt="Once upon a time", temperature=0, max_tokens=16, stop=[stop])
    c = r.choices[0]
    ensure(c.finish_reason == "stop" and c.text == text[: text.index(stop)], f"stop {stop!r}: {c.text!r}")


@check("a full context ends with finish_reason 'length' and correct usage")
def _():
    kw = dict(model=MODEL, prompt="Once upon a time", temperature=0)
    short = client.completions.create(max_tokens=1, **kw)
    r = client.completions.create(max_tokens=100000, extra_body={"ignore_eos": True}, **kw)
    c = r.choices[0]
    ensure(c.finish_reason == "length", f"finish_reason {c.finish_reason}")
    ensure(r.usage.prompt_tokens == short.usage.prompt_tokens, f"prompt_tokens {r.usage} vs {short.usage}")
    share = models[0].model_extra["meta"]["n_ctx_per_request"]
    ensure(r.usage.total_tokens == share + 1, f"usage {r.usage}: not the request's {share} cells + the last token")
    usage_ok(r.usage, len(token_ids(c)))


@check("a stream abandoned after 2 chunks frees its slot; the server goes on")
def _():
    before = health()["requests_cancelled"]
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a very long story."}],
        max_tokens=1000,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    for i, _chunk in enumerate(stream):
        if i == 1:
            break
    stream.close()
    deadline = time.monotonic() + 10
    while True:
        h = health()
        if h["slots_processing"] == 0 and h["requests_cancelled"] == before + 1:
            break
        ensure(time.monotonic() < deadline, f"slot not freed 10 s after the client went away: {h}")
        time.sleep(0.05)
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=8)
    ensure(r.choices[0].message.content.strip(), "no answer after the abandoned stream")


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "color": {"type": "string", "enum": ["red", "green", "blue"]},
    },
    "required": ["name", "age", "color"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Local time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, CLOCK]
WEATHER_Q = [{"role": "user", "content": "What is the weather in Paris?"}]
TYPES = {"object": dict, "string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list}


def conforms(value, schema, where="$"):
    """A tiny JSON-schema check: type, enum, required, properties, additionalProperties false."""
    kind = schema.get("type")
    if kind:
        ok = isinstance(value, TYPES[kind]) and not (kind in ("integer", "number") and isinstance(value, bool))
        ensure(ok, f"{where}: {value!r} is not of type {kind}")
    if "enum" in schema:
        ensure(value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}")
    if kind == "object":
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            ensure(key in value, f"{where}: required key {key!r} missing in {value}")
        for key, v in value.items():
            if key in props:
                conforms(v, props[key], f"{where}.{key}")
            else:
                ensure(schema.get("additionalProperties", True) is not False, f"{where}: extra key {key!r}")


def json_format(name, schema):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


@check("response_format json_schema: chat (whole and streamed) and completions follow the schema")
def _():
    messages = [{"role": "user", "content": "Invent a person: name, age and favourite color."}]
    kw = dict(model=MODEL, messages=messages, temperature=0, max_tokens=100)
    r = client.chat.completions.create(response_format=json_format("person", PERSON), **kw)
    c = r.choices[0]
    ensure(c.finish_reason == "stop", f"finish_reason {c.finish_reason}: {c.message.content!r}")
    person = json.loads(c.message.content)
    conforms(person, PERSON)
    print(f"     person: {person}")
    text, ids = "", []
    for chunk in client.chat.completions.create(response_format=json_format("person", PERSON), stream=True, **kw):
        for ch in chunk.choices:
            text += ch.delta.content or ""
            ids += token_ids(ch)
    # Greedy output can differ between runs of one prompt (a cached prefix
    # changes the numerics): the shape is checked, not the text.
    conforms(json.loads(text), PERSON)
    ensure(ids, "no token ids in the stream")
    # llama-server's top-level json_schema, and a completion.
    r = client.chat.completions.create(extra_body={"json_schema": PERSON}, **kw)
    conforms(json.loads(r.choices[0].message.content), PERSON)
    r = client.completions.create(
        model=MODEL,
        prompt="A person as JSON: ",
        temperature=0,
        max_tokens=100,
        extra_body={"response_format": json_format("person", PERSON)},
    )
    conforms(json.loads(r.choices[0].text), PERSON)


@check("response_format json_object: the output is a JSON object; text is unconstrained")
def _():
    messages = [{"role": "user", "content": "Reply with a JSON object with keys name and color for a cat."}]
    r = client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=120, response_format={"type": "json_object"}
    )
    c = r.choices[0]
    ensure(c.finish_reason == "stop", f"finish_reason {c.finish_reason}: {c.message.content!r}")
    value = json.loads(c.message.content)
    ensure(isinstance(value, dict), f"not an object: {value!r}")
    print(f"     object: {value}")
    r = client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=48, response_format={"type": "text"}
    )
    ensure(r.choices[0].message.content.strip(), f"no text answer: {r.choices[0]}")


@check("response_format errors: a schema with 'not' names it; bad types and combinations are 400s")
def _():
    try:
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            max_tokens=8,
            response_format=json_format("x", {"type": "object", "not": {"required": ["a"]}}),
        )
        raise CheckError("a schema with 'not' accepted")
    except openai.BadRequestError as e:
        ensure(e.status_code == 400 and '"not"' in e.message, f"{e}")
    bad = [
        {"response_format": {"type": "xml"}},
        {"response_format": {"type": "json_schema"}},
        {"response_format": {"type": "json_object"}, "json_schema": PERSON},
        {"response_format": {"type": "json_object"}, "grammar": 'root ::= "a"'},
        {"response_format": {"type": "json_object"}, "tools": [WEATHER]},
    ]
    for b in bad:
        status, body = raw("POST", "/v1/chat/completions", {"messages": QUESTION, "max_tokens": 4, **b})
        ensure(status == 400 and body["error"]["type"] == "invalid_request_error", f"{b}: {status} {body}")
    ensure(health()["slots_idle"] == 4, "slots busy after the errors")


def calls_ok(calls, tools):
    """Each call names one of the tools and its arguments follow that tool's schema."""
    ensure(calls, "no tool calls")
    by_name = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    for call in calls:
        ensure(call["type"] == "function" and call["id"], f"call shape: {call}")
        ensure(call["name"] in by_name, f"call of an unknown tool: {call}")
        conforms(json.loads(call["arguments"]), by_name[call["name"]], call["name"])


@check("tools, tool_choice required: tool_calls in OpenAI's shape, whole and streamed")
def _():
    kw = dict(model=MODEL, messages=WEATHER_Q, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=80)
    r = client.chat.completions.create(**kw)
    c = r.choices[0]
    ensure(c.finish_reason == "tool_calls", f"finish_reason {c.finish_reason}: {c.message}")
    calls = [
        {"id": t.id, "type": t.type, "name": t.function.name, "arguments": t.function.arguments}
        for t in c.message.tool_calls or []
    ]
    calls_ok(calls, TOOLS)
    ids = token_ids(c)
    usage_ok(r.usage, len(ids))
    state["tool_reply"] = c.message
    print(f"     calls: {[(x['name'], x['arguments']) for x in calls]}, content {c.message.content!r}")
    merged, sids, finish, content = {}, [], None, ""
    for chunk in client.chat.completions.create(stream=True, **kw):
        for ch in chunk.choices:
            sids += token_ids(ch)
            finish = ch.finish_reason or finish
            content += ch.delta.content or ""
            for d in ch.delta.tool_calls or []:
                m = merged.setdefault(d.index, {"id": None, "type": None, "name": "", "arguments": ""})
                m["id"] = d.id or m["id"]
                m["type"] = d.type or m["type"]
                m["name"] += (d.function and d.function.name) or ""
                m["arguments"] += (d.function and d.function.arguments) or ""
    streamed = [merged[i] for i in sorted(merged)]
    ensure(sorted(merged) == list(range(len(merged))), f"indexes {sorted(merged)}")
    calls_ok(streamed, TOOLS)
    ensure(finish == "tool_calls", f"stream finish_reason {finish}")
    ensure(sids, "no token ids in the stream")
    ensure(len({x["id"] for x in streamed}) == len(streamed), f"ids not unique: {streamed}")


@check("tools: tool_choice naming a function calls that one; a follow-up with the result gets an answer")
def _():
    r = client.chat.completions.create(
        model=MODEL,
        messages=WEATHER_Q,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        temperature=0,
        max_tokens=80,
    )
    c = r.choices[0]
    ensure(c.finish_reason == "tool_calls" and c.message.tool_calls, f"{c}")
    ensure(all(t.function.name == "get_time" for t in c.message.tool_calls), f"{c.message.tool_calls}")
    # The turn after: the assistant's call as returned (the first one, to fit
    # the 256-token share), the tool's result, then an answer in text.
    reply = state["tool_reply"]
    call = reply.tool_calls[0]
    assistant = {
        "role": "assistant",
        "content": reply.content,
        "tool_calls": [{"id": call.id, "type": "function", "function": call.function.model_dump()}],
    }
    result = {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "condition": "sunny"}'}
    r = client.chat.completions.create(
        model=MODEL, messages=WEATHER_Q + [assistant, result], tools=[WEATHER], temperature=0, max_tokens=48
    )
    c = r.choices[0]
    ensure(c.message.content and c.message.content.strip(), f"no answer: {c}")
    ensure(not c.message.tool_calls and c.finish_reason in ("stop", "length"), f"{c}")
    print(f"     answer: {c.message.content!r}")


@check("tools errors: unknown tool_choice function, a tool without a name, bad tool_choice: 400")
def _():
    try:
        client.chat.completions.create(
            model=MODEL,
            messages=WEATHER_Q,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "no_such_tool"}},
            max_tokens=8,
        )
        raise CheckError("an unknown tool in tool_choice accepted")
    except openai.BadRequestError as e:
        ensure(e.status_code == 400 and "no_such_tool" in e.message, f"{e}")
    bad = [
        {"tools": [{"type": "function", "function": {"description": "no name"}}]},
        {"tools": TOOLS, "tool_choice": "sometimes"},
        {"tool_choice": "required"},
        {"tools": [WEATHER, WEATHER]},
    ]
    for b in bad:
        status, body = raw("POST", "/v1/chat/completions", {"messages": WEATHER_Q, "max_tokens": 4, **b})
        ensure(status == 400 and body["error"]["type"] == "invalid_request_error", f"{b}: {status} {body}")
    # tool_choice "none": plain text, no calls.
    r = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=48
    )
    c = r.choices[0]
    ensure(c.message.content.strip() and not c.message.tool_calls and c.finish_reason != "tool_calls", f"{c}")
    ensure(health()["slots_idle"] == 4, "slots busy after the errors")


@check("errors: malformed JSON, unknown model, prompt too long, bad values")
def _():
    status, body = raw("POST", "/v1/chat/completions", b'{"messages": [')
    ensure(status == 400 and body["error"]["type"] == "invalid_request_error", f"malformed JSON: {status} {body}")
    status, body = raw("POST", "/v1/completions", {"model": MODEL})
    ensure(status == 400 and "prompt" in body["error"]["message"], f"no prompt: {status} {body}")
    try:
        client.chat.completions.create(model="no-such-model", messages=QUESTION, max_tokens=4)
        raise CheckError("unknown model accepted")
    except openai.NotFoundError as e:
        ensure(e.status_code == 404, f"{e}")
    try:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello " * 1000}])
        raise CheckError("a prompt longer than the context accepted")
    except openai.BadRequestError as e:
        ensure(e.code == "context_length_exceeded", f"{e}")
    for bad in [{"n": 2}, {"max_tokens": 0}, {"stop_token_ids": [10**9]}, {"top_logprobs": 50, "logprobs": True}]:
        status, body = raw("POST", "/v1/chat/completions", {"messages": QUESTION, **bad})
        ensure(status == 400 and "error" in body, f"{bad}: {status} {body}")
    # A missing model is the served one; the file name is accepted too.
    status, body = raw("POST", "/v1/chat/completions", {"messages": QUESTION, "max_tokens": 2})
    ensure(status == 200 and body["choices"], f"no model field: {status} {body}")
    meta = models[0].model_extra["meta"]
    name = meta["path"].rsplit("/", 1)[-1]
    status, body = raw("POST", "/v1/chat/completions", {"model": name, "messages": QUESTION, "max_tokens": 2})
    ensure(status == 200, f"model {name!r}: {status} {body}")
    h = health()
    ensure(h["slots_idle"] == 4, f"{h}")


CAT = "The cat sat on the mat."
CAT2 = "A cat was sitting on the rug."
REVENUE = "Quarterly revenue grew by four percent."


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def vectors(r, n):
    ensure(r.object == "list" and len(r.data) == n, f"{len(r.data)} vectors for {n} inputs: {r}")
    ensure([d.index for d in r.data] == list(range(n)), f"indexes {[d.index for d in r.data]}")
    ensure(all(d.object == "embedding" for d in r.data), f"objects {[d.object for d in r.data]}")
    return [d.embedding for d in r.data]


@check("embeddings: one string and a list; unit vectors of one length; alone or in a list, the same vector")
def _():
    one = client.embeddings.create(model=MODEL, input=CAT, encoding_format="float")
    (alone,) = vectors(one, 1)
    ensure(one.usage.prompt_tokens > 0 and one.usage.total_tokens == one.usage.prompt_tokens, f"usage {one.usage}")
    r = client.embeddings.create(model=MODEL, input=[REVENUE, CAT, CAT2], encoding_format="float")
    many = vectors(r, 3)
    dim = models[0].model_extra["meta"]["embeddings"]["dim"]
    ensure(all(len(v) == len(alone) == dim for v in many), f"lengths {[len(v) for v in many]}, {len(alone)}, {dim}")
    norms = [math.sqrt(dot(v, v)) for v in many + [alone]]
    ensure(all(abs(n - 1) < 1e-3 for n in norms), f"norms {norms}")
    diff = max(abs(a - b) for a, b in zip(alone, many[1]))
    ensure(diff < 1e-3, f"{CAT!r} alone and in a list differ by {diff}")
    ensure(r.usage.prompt_tokens > one.usage.prompt_tokens, f"usage {r.usage} vs {one.usage}")
    state["cat"] = alone
    similar, unrelated = dot(many[1], many[2]), dot(many[1], many[0])
    print(f"     {dim} dims, |alone - in list| {diff:.1e}; cosine: similar {similar:.3f}, unrelated {unrelated:.3f}")
    ensure(similar > unrelated, f"cosine({CAT!r}, {CAT2!r}) = {similar} <= {unrelated} with {REVENUE!r}")


@check("embeddings: base64 (the client's default) decodes to the same vector; token-id inputs")
def _():
    r = client.embeddings.create(model=MODEL, input=CAT, encoding_format="base64")
    b64 = r.data[0].embedding
    ensure(isinstance(b64, str), f"not a base64 string: {str(b64)[:80]}")
    v = array.array("f", base64.b64decode(b64))  # little-endian hosts
    ensure(len(v) == len(state["cat"]), f"{len(v)} floats")
    diff = max(abs(a - b) for a, b in zip(v, state["cat"]))
    ensure(diff < 1e-3, f"base64 vector differs by {diff}")
    # The client asks for base64 when no format is given and decodes it itself.
    (default,) = vectors(client.embeddings.create(model=MODEL, input=CAT), 1)
    ensure(max(abs(a - b) for a, b in zip(default, state["cat"])) < 1e-3, "the default format's vector differs")
    # Token ids: one list, or several.
    status, body = raw("POST", "/v1/embeddings", {"model": MODEL, "input": [[1, 2, 3], [4, 5]]})
    ensure(status == 200 and len(body["data"]) == 2 and body["usage"]["prompt_tokens"] == 5, f"{status} {body}")
    status, body = raw("POST", "/v1/embeddings", {"model": MODEL, "input": [1, 2, 3]})
    ensure(status == 200 and len(body["data"]) == 1, f"{status} {body}")


@check("embeddings errors: empty input, too long, dimensions, unknown model; rerank not enabled (501)")
def _():
    for bad, says in [({"input": ""}, "empty"), ({"input": []}, "empty"), ({"input": ["a", ""]}, "input[1]")]:
        status, body = raw("POST", "/v1/embeddings", {"model": MODEL, **bad})
        ensure(status == 400 and says in body["error"]["message"], f"{bad}: {status} {body}")
    try:
        client.embeddings.create(model=MODEL, input=["short", "hello " * 3000], encoding_format="float")
        raise CheckError("an input longer than the embedder's batch accepted")
    except openai.BadRequestError as e:
        ensure(e.code == "context_length_exceeded" and "input[1]" in e.message, f"{e}")
    try:
        client.embeddings.create(model=MODEL, input=CAT, dimensions=64)
        raise CheckError("dimensions accepted")
    except openai.BadRequestError as e:
        ensure("not supported" in e.message, f"{e}")
    try:
        client.embeddings.create(model="no-such-model", input=CAT)
        raise CheckError("unknown model accepted")
    except openai.NotFoundError as e:
        ensure(e.status_code == 404, f"{e}")
    status, body = raw("POST", "/v1/embeddings", b'{"input": [')
    ensure(status == 400, f"malformed JSON: {status} {body}")
    status, body = raw("POST", "/v1/rerank", {"model": MODEL, "query": "q", "documents": ["a", "b"]})
    ensure(status == 501 and "--reranking" in body["error"]["message"], f"rerank: {status} {body}")
    ensure(health()["slots_idle"] == 4, "slots busy after the embeddings")


if failures:
    print(f"\n{len(failures)} check(s) failed: " + "; ".join(failures))
    sys.exit(1)
print("\nall server checks passed")
