//! Command line of the `tokens_per_second` bench: llama-bench's flags, each
//! taking a comma list (one table row per combination), also read from the
//! `LLAMA_BENCH_ARGS` environment variable. Both are read with the parser
//! the examples share (`examples/common/args.rs`).

use crate::common::args::{env_then_cli, ArgResult};
use llama_rs::{FlashAttention, KvType, SplitMode};

pub const USAGE: &str = "\
usage: cargo bench --bench tokens_per_second -- [options]

llama-bench's method and columns, from Rust. Every list option takes comma-separated values
(or may be repeated); the table has one row per combination.

options:
  -h, --help                  this text
  -m, --model <paths>         GGUF models, or synthetic:<shape>[:<type>] with shape tiny|small|8b|70b
                              and type f32|f16|q8_0|q4_k|q6_k|q4_k_m (random weights, written once
                              into the fixture folder). Default: synthetic:small:q4_k_m
  -p, --n-prompt <n>          prompt sizes, test ppN (default 512; 0 = none)
  -n, --n-gen <n>             generation lengths, test tgN (default 128; 0 = none)
  -pg <pp,tg>                 prompt then generation, test ppN+tgM (repeat the flag for more)
  -d, --n-depth <n>           tokens already in the KV cache before each test, not timed (default 0)
  -b, --batch-size <n>        n_batch: tokens per decode call (default 2048)
  -ub, --ubatch-size <n>      n_ubatch: physical batch (default 512)
  -ngl, --n-gpu-layers <n>    layers on the GPUs (default 99 = all; ignored without GPUs)
  -sm, --split-mode <m>       none|layer|row|tensor|auto (default layer); auto measures layer and
                              tensor briefly on this machine and keeps the faster for --workload
  --workload <w>              pp|tg: what -sm auto optimises for (default tg)
  -ts, --tensor-split <s>     share per GPU, '/' inside one value: 3/1 (default: llama.cpp's)
  -mg, --main-gpu <i>         GPU for -sm none (default 0)
  --rpc <host:port,...>       RPC servers whose devices come first in every model's device list
                              (feature rpc)
  -fa, --flash-attn <f>       auto|on|off, also 1|0|-1 (default auto)
  -ctk, --cache-type-k <t>    K cache type: f32|f16|bf16|q8_0|q4_0|q4_1|iq4_nl|q5_0|q5_1 (default f16)
  -ctv, --cache-type-v <t>    V cache type (default f16)
  -t, --threads <n>           CPU threads (default: all available)
  -r, --repetitions <n>       timed repetitions per test, after one warm-up run (default 5)
  -o, --output <f>            md|json (default md); json: llama-bench's records on stdout,
                              everything else on stderr
  --overhead-reps <n>         interleaved raw/safe pairs per overhead line (default 2 x -r, min 2)
  --no-overhead               skip the raw-vs-safe overhead lines

environment:
  LLAMA_BENCH_ARGS            the same options as one string, read before the command line; an
                              option given on the command line replaces its value from there.
                              e.g. LLAMA_BENCH_ARGS='-p 512 -n 128 -r 3' cargo bench --bench tokens_per_second
  LLAMA_RS_FIXTURE_DIR        where synthetic models are written (default: the build's fixture folder)
  RUST_LOG                    llama.cpp's log lines (target llama_cpp), e.g. RUST_LOG=llama_cpp=info

The defaults (pp512, tg128, 5 repetitions, overhead lines) take about a minute on a 2-core CPU
with the small synthetic model. Method and output: docs/BENCHMARKS.md.";

/// The default synthetic model.
pub const DEFAULT_MODEL: &str = "synthetic:small:q4_k_m";

/// A split mode, or "measure and choose".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitChoice {
    Mode(SplitMode),
    Auto,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Pp,
    Tg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Md,
    Json,
}

#[derive(Clone, Debug)]
pub struct Args {
    pub models: Vec<String>,
    pub n_prompt: Vec<u32>,
    pub n_gen: Vec<u32>,
    pub pg: Vec<(u32, u32)>,
    pub depth: Vec<u32>,
    pub n_batch: Vec<u32>,
    pub n_ubatch: Vec<u32>,
    pub ngl: Vec<i32>,
    pub split: Vec<SplitChoice>,
    pub tensor_split: Vec<Vec<f32>>,
    pub main_gpu: Vec<usize>,
    /// RPC servers (`--rpc HOST:PORT,...`, as llama-bench): their devices come
    /// first in every model's device list.
    pub rpc: Vec<String>,
    pub flash_attn: Vec<FlashAttention>,
    pub type_k: Vec<KvType>,
    pub type_v: Vec<KvType>,
    pub threads: Vec<u32>,
    pub reps: usize,
    pub output: Output,
    pub workload: Workload,
    pub overhead: bool,
    pub overhead_reps: Option<usize>,
    /// Options that differ from llama-bench's defaults or list several values
    /// (they get their own table column).
    pub shown: Vec<&'static str>,
}

impl Default for Args {
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map_or(4, |n| n.get() as u32);
        Args {
            models: vec![DEFAULT_MODEL.into()],
            n_prompt: vec![512],
            n_gen: vec![128],
            pg: Vec::new(),
            depth: vec![0],
            n_batch: vec![2048],
            n_ubatch: vec![512],
            ngl: vec![99],
            split: vec![SplitChoice::Mode(SplitMode::Layer)],
            tensor_split: vec![Vec::new()],
            main_gpu: vec![0],
            rpc: Vec::new(),
            flash_attn: vec![FlashAttention::Auto],
            type_k: vec![KvType::F16],
            type_v: vec![KvType::F16],
            threads: vec![threads],
            reps: 5,
            output: Output::Md,
            workload: Workload::Tg,
            overhead: true,
            overhead_reps: None,
            shown: Vec::new(),
        }
    }
}

/// Canonical name of a flag (aliases folded), and whether it takes a value.
fn canonical(flag: &str) -> Option<(&'static str, bool)> {
    Some(match flag {
        "--bench" => ("--bench", false),
        "--no-overhead" => ("--no-overhead", false),
        "-m" | "--model" => ("-m", true),
        "-p" | "--n-prompt" => ("-p", true),
        "-n" | "--n-gen" => ("-n", true),
        "-pg" => ("-pg", true),
        "-d" | "--n-depth" => ("-d", true),
        "-b" | "--batch-size" => ("-b", true),
        "-ub" | "--ubatch-size" => ("-ub", true),
        "-ngl" | "--n-gpu-layers" => ("-ngl", true),
        "-sm" | "--split-mode" => ("-sm", true),
        "--workload" => ("--workload", true),
        "-ts" | "--tensor-split" => ("-ts", true),
        "-mg" | "--main-gpu" => ("-mg", true),
        "-rpc" | "--rpc" => ("--rpc", true),
        "-fa" | "--flash-attn" => ("-fa", true),
        "-ctk" | "--cache-type-k" => ("-ctk", true),
        "-ctv" | "--cache-type-v" => ("-ctv", true),
        "-t" | "--threads" => ("-t", true),
        "-r" | "--repetitions" => ("-r", true),
        "-o" | "--output" => ("-o", true),
        "--overhead-reps" => ("--overhead-reps", true),
        _ => return None,
    })
}

fn list<T>(flag: &str, value: &str, parse: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    value.split(',').map(|v| parse(v.trim()).map_err(|e| format!("{flag} {value:?}: {e}"))).collect()
}

fn num<T: std::str::FromStr>(s: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>().map_err(|e| format!("{s:?}: {e}"))
}

/// Parses `LLAMA_BENCH_ARGS` (whitespace-separated) then the command line;
/// `-h` in either comes back as [`ArgError::Help`](crate::common::args::ArgError::Help).
pub fn parse(env: Option<&str>, cli: &[String]) -> ArgResult<Args> {
    let all = env_then_cli("LLAMA_BENCH_ARGS", env, cli, canonical)?;
    let mut a = Args::default();
    let mut seen: Vec<&'static str> = Vec::new();
    for (flag, value) in all {
        // The first occurrence replaces the default; later ones append.
        let first = !seen.contains(&flag);
        if first {
            seen.push(flag);
        }
        macro_rules! set {
            ($field:ident, $parse:expr) => {{
                let v = list(flag, &value, $parse)?;
                if first {
                    a.$field = v;
                } else {
                    a.$field.extend(v);
                }
            }};
        }
        match flag {
            "--bench" => {} // added by `cargo bench` to harness = false targets
            "--no-overhead" => a.overhead = false,
            "-m" => {
                set!(models, |s| if s.is_empty() { Err("empty model path".to_string()) } else { Ok(s.to_string()) })
            }
            "-p" => set!(n_prompt, num::<u32>),
            "-n" => set!(n_gen, num::<u32>),
            "-pg" => {
                let v: Vec<u32> = list(flag, &value, num::<u32>)?;
                if v.len() != 2 {
                    return Err(
                        format!("-pg {value:?}: expected two numbers, pp,tg (repeat -pg for more pairs)").into()
                    );
                }
                a.pg.push((v[0], v[1]));
            }
            "-d" => set!(depth, num::<u32>),
            "-b" => set!(n_batch, positive),
            "-ub" => set!(n_ubatch, positive),
            "-ngl" => set!(ngl, num::<i32>),
            "-sm" => set!(split, |s| match s {
                "auto" => Ok(SplitChoice::Auto),
                _ => s.parse::<SplitMode>().map(SplitChoice::Mode).map_err(|e| format!("{e} or auto")),
            }),
            "--workload" => {
                a.workload = match value.as_str() {
                    "pp" | "prompt" => Workload::Pp,
                    "tg" | "gen" | "generation" => Workload::Tg,
                    v => return Err(format!("--workload {v:?}: expected pp or tg").into()),
                }
            }
            "-ts" => set!(tensor_split, |s| s
                .split('/')
                .map(|x| x.trim().parse::<f32>().map_err(|e| format!("{x:?}: {e}")))
                .collect::<Result<Vec<f32>, String>>()),
            "-mg" => set!(main_gpu, num::<usize>),
            "--rpc" => a.rpc = list(flag, &value, |s| Ok(s.to_string()))?,
            "-fa" => set!(flash_attn, |s| s.parse::<FlashAttention>().map_err(|e| e.to_string())),
            "-ctk" => set!(type_k, |s| s.parse::<KvType>().map_err(|e| e.to_string())),
            "-ctv" => set!(type_v, |s| s.parse::<KvType>().map_err(|e| e.to_string())),
            "-t" => set!(threads, positive),
            "-r" => {
                a.reps = positive(&value).map_err(|e| format!("-r: {e}"))? as usize;
            }
            "-o" => {
                a.output = match value.as_str() {
                    "md" => Output::Md,
                    "json" => Output::Json,
                    v => return Err(format!("-o {v:?}: expected md or json").into()),
                }
            }
            "--overhead-reps" => {
                a.overhead_reps = Some(positive(&value).map_err(|e| format!("--overhead-reps: {e}"))? as usize);
            }
            _ => unreachable!("canonical() lists every flag"),
        }
    }
    // As in llama-bench, -pg adds its tests to the pp512/tg128 defaults
    // (give -p 0 -n 0 for pg tests only).
    for (flag, many) in [
        ("-b", a.n_batch.len() > 1 || a.n_batch != [2048]),
        ("-ub", a.n_ubatch.len() > 1 || a.n_ubatch != [512]),
        ("-ctk", a.type_k.len() > 1 || a.type_k != [KvType::F16]),
        ("-ctv", a.type_v.len() > 1 || a.type_v != [KvType::F16]),
        ("-mg", a.main_gpu.len() > 1 || a.main_gpu != [0]),
        ("-t", seen.contains(&"-t")),
    ] {
        if many {
            a.shown.push(flag);
        }
    }
    Ok(a)
}

fn positive(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(0) => Err(format!("{s:?}: must be at least 1")),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{s:?}: {e}")),
    }
}
