#!/usr/bin/env python3
"""Renders the chat-template corpus with Python's jinja2, driven the way
Hugging Face transformers drives it, as the reference for the Rust renderer.

    python3 scripts/chat_template_reference.py --check [--model PATH]
    python3 scripts/chat_template_reference.py --write [--model PATH]
    python3 scripts/chat_template_reference.py --show 'chatml|tool_calls|1' [--model PATH]

Run by scripts/template-check (which pins jinja2 in a venv). Every case is a
template x a message set x add_generation_prompt in {false, true}:

  templates  tests/templates/corpus/NAME.jinja (read byte for byte, UTF-8),
             plus `smollm2`: tokenizer.chat_template read out of the real test
             model's GGUF (--model PATH, else the path `scripts/fetch-model
             --path` prints) by the small GGUF reader below
  messages   tests/templates/messages/NAME.json: {"messages": [...],
             "tools": [...] (optional), "documents": [...] (optional)}

Expected results live in tests/templates/expected.json, keyed
"<template>|<messages>|<0 or 1>" (the last part is add_generation_prompt), each
{"output": "..."} or {"error": "...", "error_type": "..."}: the exception's
message and its class name (TemplateError for raise_exception, else
UndefinedError, TypeError, ...). --write regenerates the file; --check renders
everything again, prints each difference and exits 1 on any.

The environment copies transformers' _compile_jinja_template and
render_jinja_template (src/transformers/utils/chat_template_utils.py):
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
extensions=[AssistantTracker, jinja2.ext.loopcontrols]); the `tojson` filter
replaced by json.dumps(x, ensure_ascii=False, indent=indent,
separators=separators, sort_keys=sort_keys); globals raise_exception
(raises jinja2.exceptions.TemplateError(message)) and strftime_now. The render
call passes messages, tools, documents (None when the message set has none, so
`tools is defined` is true and `tools is none` is true, as in transformers),
add_generation_prompt, and bos_token="<s>", eos_token="</s>"; no other kwargs.

strftime_now uses a FIXED clock, 2026-01-15 12:00:00 UTC (Unix time
1768478400, a Thursday), in the C locale, so the expected outputs never change
with the date (the Rust test uses the same instant).
"""

import argparse
import datetime
import json
import locale
import re
import struct
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "tests" / "templates"
CORPUS = TEMPLATES / "corpus"
MESSAGES = TEMPLATES / "messages"
EXPECTED = TEMPLATES / "expected.json"
SYNTHETIC_RS = ROOT / "llama-rs" / "src" / "synthetic" / "vocab.rs"

FIXED_NOW = datetime.datetime(2026, 1, 15, 12, 0, 0)  # UTC; naive, so %Z and %z are empty
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
MODEL_TEMPLATE_NAME = "smollm2"
# corpus file -> the Rust constant in synthetic/vocab.rs whose text it must equal
SYNTHETIC = {"synthetic_chatml": "CHATML_TEMPLATE", "synthetic_llama3": "LLAMA3_TEMPLATE"}


# ---------------------------------------------------------------- jinja2, as transformers sets it up


class AssistantTracker(Extension):
    """transformers' `{% generation %}...{% endgeneration %}` tag. Rendering
    only: the body is output unchanged (index tracking is not needed here)."""

    tags = {"generation"}

    def __init__(self, environment):
        super().__init__(environment)
        environment.extend(activate_tracker=self.activate_tracker)
        self._rendered_blocks = None
        self._generation_indices = None

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.CallBlock:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_generation_support"), [], [], body).set_lineno(lineno)

    @jinja2.pass_eval_context
    def _generation_support(self, context, caller):
        rv = caller()
        if self.is_active():
            start_index = len("".join(self._rendered_blocks))
            self._generation_indices.append((start_index, start_index + len(rv)))
        return rv

    def is_active(self) -> bool:
        return self._rendered_blocks is not None or self._generation_indices is not None

    @contextmanager
    def activate_tracker(self, rendered_blocks, generation_indices):
        try:
            if self.is_active():
                raise ValueError("AssistantTracker should not be reused before closed")
            self._rendered_blocks = rendered_blocks
            self._generation_indices = generation_indices
            yield
        finally:
            self._rendered_blocks = None
            self._generation_indices = None


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers' override: no HTML escaping, non-ASCII kept, options exposed
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(format):
    return FIXED_NOW.strftime(format)


def make_env():
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[AssistantTracker, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


# ---------------------------------------------------------------- GGUF metadata


GGUF_SCALARS = {
    0: "<B",  # uint8
    1: "<b",  # int8
    2: "<H",  # uint16
    3: "<h",  # int16
    4: "<I",  # uint32
    5: "<i",  # int32
    6: "<f",  # float32
    7: "<?",  # bool
    10: "<Q",  # uint64
    11: "<q",  # int64
    12: "<d",  # float64
}
GGUF_STRING = 8
GGUF_ARRAY = 9


def gguf_metadata(path, wanted):
    """The values of the keys in `wanted` (arrays are skipped, never kept)
    from a GGUF v2/v3 file: magic, version, tensor count, kv count, then the
    key/value pairs."""
    with open(path, "rb") as f:

        def read(n):
            b = f.read(n)
            if len(b) != n:
                raise ValueError(f"{path}: truncated GGUF header")
            return b

        def unpack(fmt):
            return struct.unpack(fmt, read(struct.calcsize(fmt)))[0]

        def string():
            return read(unpack("<Q")).decode("utf-8")

        def value(vtype, keep):
            if vtype == GGUF_STRING:
                if keep:
                    return string()
                f.seek(unpack("<Q"), 1)
                return None
            if vtype == GGUF_ARRAY:
                etype, count = unpack("<I"), unpack("<Q")
                if etype in GGUF_SCALARS:
                    f.seek(struct.calcsize(GGUF_SCALARS[etype]) * count, 1)
                else:
                    for _ in range(count):
                        value(etype, False)
                return None
            if vtype not in GGUF_SCALARS:
                raise ValueError(f"{path}: unknown GGUF value type {vtype}")
            return unpack(GGUF_SCALARS[vtype])

        if read(4) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        version = unpack("<I")
        if version not in (2, 3):
            raise ValueError(f"{path}: GGUF version {version}, only 2 and 3 are read")
        unpack("<Q")  # tensor count
        kv_count = unpack("<Q")
        found = {}
        for _ in range(kv_count):
            key = string()
            vtype = unpack("<I")
            v = value(vtype, key in wanted)
            if key in wanted:
                found[key] = v
        return found


# ---------------------------------------------------------------- inputs


def default_model_path():
    out = subprocess.run(
        [str(ROOT / "scripts" / "fetch-model"), "--path"], check=True, capture_output=True, text=True
    ).stdout
    return Path(out.strip())


def rust_string_literal(source, const):
    """The value of `const NAME: &str = "...";` in Rust source (plain
    literals with the usual escapes)."""
    m = re.search(r"const\s+" + re.escape(const) + r'\s*:\s*&str\s*=\s*"((?:[^"\\]|\\.)*)"\s*;', source, re.S)
    if not m:
        raise ValueError(f"{SYNTHETIC_RS}: no string constant {const}")
    body = m.group(1)
    simple = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", '"': '"', "'": "'"}

    def unescape(e):
        s = e.group(1)
        if s in simple:
            return simple[s]
        if s.startswith("u{"):
            return chr(int(s[2:-1], 16))
        if s.startswith("x"):
            return chr(int(s[1:], 16))
        if s.startswith("\n"):
            return ""  # line continuation: the newline and following whitespace go
        raise ValueError(f"{const}: unknown escape \\{s}")

    return re.sub(r"\\(u\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|\n\s*|.)", unescape, body)


def load_templates(model):
    templates = {}
    for path in sorted(CORPUS.glob("*.jinja")):
        templates[path.stem] = path.read_bytes().decode("utf-8")
    if MODEL_TEMPLATE_NAME in templates:
        raise SystemExit(f"{CORPUS}/{MODEL_TEMPLATE_NAME}.jinja: that name is the model's own template")
    key = "tokenizer.chat_template"
    meta = gguf_metadata(model, {key})
    if key not in meta:
        raise SystemExit(f"{model}: no {key} in the GGUF metadata")
    templates[MODEL_TEMPLATE_NAME] = meta[key]
    return templates


def synthetic_drift(templates):
    """Messages for corpus files that no longer equal synthetic/vocab.rs's texts."""
    source = SYNTHETIC_RS.read_text(encoding="utf-8")
    problems = []
    for name, const in SYNTHETIC.items():
        want = rust_string_literal(source, const)
        if templates.get(name) != want:
            problems.append(
                f"{(CORPUS / name).relative_to(ROOT)}.jinja differs from {const} in {SYNTHETIC_RS.relative_to(ROOT)}"
            )
    return problems


def load_message_sets():
    sets = {}
    for path in sorted(MESSAGES.glob("*.json")):
        data = json.loads(path.read_bytes().decode("utf-8"))
        unknown = set(data) - {"messages", "tools", "documents"}
        if unknown or "messages" not in data:
            raise SystemExit(f"{path}: want keys messages, tools, documents; got {sorted(data)}")
        sets[path.stem] = data
    return sets


# ---------------------------------------------------------------- rendering


def render_case(env, template_text, data, add_generation_prompt):
    try:
        compiled = env.from_string(template_text)
        output = compiled.render(
            messages=data["messages"],
            tools=data.get("tools"),
            documents=data.get("documents"),
            add_generation_prompt=add_generation_prompt,
            bos_token=BOS_TOKEN,
            eos_token=EOS_TOKEN,
        )
    except Exception as e:  # noqa: BLE001 - every failure is a recorded result
        return {"error": str(e), "error_type": type(e).__name__}
    return {"output": output}


def render_all(templates, sets):
    env = make_env()
    results = {}
    for tname, text in templates.items():
        for mname, data in sets.items():
            for agp in (0, 1):
                # a fresh deep copy per case: nothing a render does can leak into the next
                results[f"{tname}|{mname}|{agp}"] = render_case(env, text, json.loads(json.dumps(data)), bool(agp))
    return results


def dump(results):
    return json.dumps(results, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def first_difference(a, b):
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return n, a[max(0, n - 40) : n + 40], b[max(0, n - 40) : n + 40]


def check(results):
    try:
        expected = json.loads(EXPECTED.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        print(f"{EXPECTED} is missing: run with --write", file=sys.stderr)
        return 1
    identical = 0
    bad = 0
    for key in sorted(set(results) | set(expected)):
        got, want = results.get(key), expected.get(key)
        if got == want:
            identical += 1
            continue
        bad += 1
        if want is None:
            print(f"MISMATCH {key}: new case, not in expected.json")
        elif got is None:
            print(f"MISMATCH {key}: in expected.json, but no such template or message set now")
        elif "output" in got and "output" in want:
            at, g, w = first_difference(got["output"], want["output"])
            print(f"MISMATCH {key}: output differs at character {at}\n  expected: {w!r}\n  rendered: {g!r}")
        else:
            print(f"MISMATCH {key}:\n  expected: {want!r}\n  rendered: {got!r}")
    if EXPECTED.read_bytes().decode("utf-8") != dump(expected):
        print(f"MISMATCH {EXPECTED}: not in the canonical form (sorted keys, indent=1): run --write")
        bad += 1
    print(f"{len(results)} cases, {identical} identical")
    return 1 if bad else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate tests/templates/expected.json")
    mode.add_argument("--check", action="store_true", help="compare with tests/templates/expected.json")
    mode.add_argument("--show", metavar="KEY", help="print one case's result, e.g. 'chatml|tool_calls|1'")
    ap.add_argument("--model", type=Path, help="the SmolLM2 GGUF (default: scripts/fetch-model --path)")
    args = ap.parse_args()

    locale.setlocale(locale.LC_TIME, "C")
    model = args.model or default_model_path()
    if not model.is_file():
        raise SystemExit(f"{model}: no such model file (run scripts/fetch-model)")
    templates = load_templates(model)
    drift = synthetic_drift(templates)
    for problem in drift:
        print(f"MISMATCH {problem}")
    sets = load_message_sets()
    results = render_all(templates, sets)

    if args.show:
        if args.show not in results:
            raise SystemExit(f"no case {args.show!r}")
        r = results[args.show]
        sys.stdout.write(r["output"] if "output" in r else f"{r['error_type']}: {r['error']}\n")
        return 0
    if args.write:
        if drift:
            return 1
        EXPECTED.write_text(dump(results), encoding="utf-8")
        errors = sum("error" in r for r in results.values())
        print(
            f"wrote {EXPECTED.relative_to(ROOT)}: {len(templates)} templates x {len(sets)} message sets x 2"
            f" = {len(results)} cases ({errors} errors), jinja2 {jinja2.__version__}"
        )
        return 0
    status = check(results)
    return 1 if drift else status


if __name__ == "__main__":
    sys.exit(main())
