//! The examples' command lines: llama.cpp's flags (multi-letter single-dash
//! ones whole), `-h` listing every flag, and exit status 2 with the usage line
//! for an unknown or malformed flag. The binaries are the examples `cargo
//! test` builds beside this test.

mod common;

use common::{example_binary, tiny_path};
use llama_rs::synthetic::VocabKind;
use std::process::{Command, Output};

fn run(example: &str, args: &[&str]) -> Output {
    Command::new(example_binary(example)).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The examples every default build has (`rpc-server` needs feature `rpc`).
const EXAMPLES: [&str; 5] = ["generate", "info", "plan", "synthetic", "quantize"];

#[test]
fn help_lists_the_flags_and_exits_0() {
    for example in EXAMPLES {
        let out = run(example, &["-h"]);
        assert_eq!(out.status.code(), Some(0), "{example} -h: {}", text(&out.stderr));
        let help = text(&out.stdout);
        assert!(help.starts_with("usage:"), "{example} -h prints:\n{help}");
        assert_eq!(run(example, &["--help"]).stdout, out.stdout, "{example}: -h and --help differ");
    }
    // generate takes llama-cli's flags, each listed by -h.
    let help = text(&run("generate", &["-h"]).stdout);
    for flag in [
        "-m,",
        "-p,",
        "-n,",
        "-s,",
        "-c,",
        "-b,",
        "-ub,",
        "-t,",
        "-fa,",
        "-ngl,",
        "-sm,",
        "-ts,",
        "-mg,",
        "-ctk,",
        "-ctv,",
        "--temp",
        "--top-k",
        "--top-p",
        "--min-p",
        "--repeat-penalty",
        "--repeat-last-n",
        "--ignore-eos",
        "--grammar-file",
        "--json-schema",
    ] {
        assert!(help.contains(flag), "generate -h does not list {flag}:\n{help}");
    }
}

#[test]
fn unknown_and_malformed_flags_exit_2_with_the_usage_line() {
    let cases: &[(&str, &[&str], &str)] = &[
        ("generate", &["--bogus"], "--bogus"),
        ("generate", &["-ngl"], "-ngl"),
        ("generate", &["-n", "abc"], "-n"),
        ("generate", &["-ctk", "q9"], "-ctk"),
        ("generate", &["-sm", "diagonal"], "-sm"),
        ("generate", &["--top-p", "2"], "--top-p"),
        ("generate", &["-n16"], "-n16"),
        ("info", &["--bogus"], "--bogus"),
        ("plan", &["-ngl", "many"], "-ngl"),
        ("synthetic", &["--shape", "huge"], "--shape"),
        ("quantize", &["--bogus"], "--bogus"),
    ];
    for (example, args, named) in cases {
        let out = run(example, args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{example} {args:?}: status {:?}, stderr:\n{err}", out.status);
        assert!(err.starts_with("error: ") && err.contains(named), "{example} {args:?} does not name {named}:\n{err}");
        assert!(err.contains("usage:"), "{example} {args:?} prints no usage line:\n{err}");
        assert!(out.stdout.is_empty(), "{example} {args:?} wrote to stdout");
    }
}

#[test]
fn generate_runs_with_llama_cli_flags() {
    let model = tiny_path(VocabKind::Spm);
    let model = model.to_str().unwrap();
    let flags = [
        "-m",
        model,
        "-p",
        "Once upon a time",
        "-n",
        "8",
        "-s",
        "7",
        "-c",
        "256",
        "-b",
        "64",
        "-ub",
        "32",
        "-t",
        "1",
        "-fa",
        "off",
        "-ngl",
        "0",
        "-ctk",
        "q8_0",
        "-ctv",
        "f16",
        "--temp",
        "0.7",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
        "--min-p",
        "0.05",
        "--repeat-penalty",
        "1.1",
        "--repeat-last-n",
        "16",
        "--ignore-eos",
    ];
    let first = run("generate", &flags);
    assert_eq!(first.status.code(), Some(0), "generate failed:\n{}", text(&first.stderr));
    assert!(!first.stdout.is_empty(), "generate printed nothing");
    // The same seed gives the same text.
    let second = run("generate", &flags);
    assert_eq!(first.stdout, second.stdout, "same flags and seed, different text");
}
