//! The template corpus (`tests/templates/`) renders here byte for byte as
//! Python's `jinja2` renders it when driven the way transformers'
//! `apply_chat_template` drives it. `tests/templates/expected.json` holds
//! jinja2's output for every template x message set x generation prompt;
//! `scripts/template-check` (a CI step) renders them again in Python and
//! fails if the file is stale. The real model's own template is one of the
//! templates, read from the model file here as the script reads it there.

mod common;

use llama_rs::{ChatOptions, ChatTemplate, Error};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("templates")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Names of the `.jinja` or `.json` files in a corpus folder.
fn names(folder: &str, ext: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(corpus_dir().join(folder))
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == ext).then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    names
}

#[test]
fn corpus_renders_as_jinja2_does() {
    let expected = read_json(&corpus_dir().join("expected.json"));
    let expected = expected.as_object().expect("expected.json is an object");
    // The clock and tokens the reference script uses.
    let now = UNIX_EPOCH + Duration::from_secs(1_768_478_400); // 2026-01-15 12:00:00 UTC
    let mut templates: BTreeMap<String, ChatTemplate> = BTreeMap::new();
    for name in names("corpus", "jinja") {
        let source = std::fs::read_to_string(corpus_dir().join("corpus").join(format!("{name}.jinja"))).unwrap();
        let t = ChatTemplate::new(source).unwrap_or_else(|e| panic!("{name} does not compile: {e}"));
        templates.insert(name, t.bos_token("<s>").eos_token("</s>"));
    }
    let real = common::real_model().chat_template(None).expect("the real model has a chat template");
    templates.insert("smollm2".into(), ChatTemplate::new(real).unwrap().bos_token("<s>").eos_token("</s>"));
    let sets: BTreeMap<String, Value> = names("messages", "json")
        .into_iter()
        .map(|n| (n.clone(), read_json(&corpus_dir().join("messages").join(format!("{n}.json")))))
        .collect();

    // Every template x set x generation prompt has its case: none is left
    // out of the comparison.
    assert_eq!(
        expected.len(),
        templates.len() * sets.len() * 2,
        "expected.json is stale: run scripts/template-check --write"
    );

    let (mut identical, mut errors) = (0, 0);
    let mut mismatches = Vec::new();
    for (key, want) in expected {
        let parts: Vec<&str> = key.split('|').collect();
        let [t, m, agp] = parts[..] else { panic!("bad key {key}") };
        let template = templates.get(t).unwrap_or_else(|| panic!("{key}: no template {t}"));
        let set = sets.get(m).unwrap_or_else(|| panic!("{key}: no message set {m}"));
        let list = |field: &str| set.get(field).and_then(Value::as_array).cloned().unwrap_or_default();
        let options = ChatOptions::default()
            .add_generation_prompt(agp == "1")
            .now(now)
            .tools(list("tools"))
            .documents(list("documents"));
        let got = template.render_json(&list("messages"), &options);
        let want: &Map<String, Value> = want.as_object().unwrap();
        match (want.get("output").and_then(Value::as_str), got) {
            (Some(out), Ok(got)) if out == got => identical += 1,
            (Some(out), Ok(got)) => mismatches.push(format!("{key}: jinja2 {out:?}\n   here {got:?}")),
            (Some(_), Err(e)) => mismatches.push(format!("{key}: jinja2 renders, here {e}")),
            (None, Ok(got)) => mismatches.push(format!("{key}: jinja2 raised {:?}, here {got:?}", want["error"])),
            (None, Err(Error::ChatTemplate { line, message })) => {
                // raise_exception's text is passed on, with the line.
                if want.get("error_type").and_then(Value::as_str) == Some("TemplateError") {
                    let text = want["error"].as_str().unwrap();
                    if !message.contains(text) || line.is_none() {
                        mismatches.push(format!("{key}: raised {text:?}, here line {line:?}: {message}"));
                    }
                }
                errors += 1;
            }
            (None, Err(e)) => mismatches.push(format!("{key}: not a template error: {e}")),
        }
    }
    eprintln!(
        "{} templates x {} message sets x 2: {} cases, {identical} rendered byte-identical, {errors} raise in both",
        templates.len(),
        sets.len(),
        expected.len()
    );
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ:\n{}",
        mismatches.len(),
        expected.len(),
        mismatches.join("\n")
    );
    assert!(identical > errors, "most cases must render");
}
