//! llama.cpp's `llama-batched-bench`, from Rust: `npl` sequences decoded
//! together, each with a prompt of `npp` tokens then `ntg` generated tokens,
//! measured two ways on one loaded model, interleaved: a raw `llama_sys` loop
//! doing batched-bench's batches, and the serving [`Engine`] with `npl` slots
//! and `npl` requests submitted at once.
//!
//! ```text
//! cargo bench --bench batched                                     # -npp 128 -ntg 32 -npl 1,4,16, small synthetic model
//! cargo bench --bench batched -- -h                               # every option
//! cargo bench --bench batched -- -npp 32 -ntg 8 -npl 1,4 -r 1     # smoke check (CI)
//! LLAMA_BATCHED_BENCH_ARGS='-m model.gguf -npl 1,8,32 -pps' cargo bench --bench batched
//! ```
//!
//! Per combination: PP = the prompts (all sequences' tokens in one batch,
//! decoded in n_batch views; with `-pps` one prompt, then `seq_cp` to the
//! others) and the greedy first token of each sequence; TG = `ntg` steps of one
//! token per sequence, each sampled greedily from its logits row and fed back.
//! The engine does the same work: requests of `max_tokens(ntg + 1)`, its PP
//! ends when the last request's first token is sampled, its TG when the last
//! request is done. Columns and speeds are batched-bench's; after each `npl`,
//! the overhead line gives the median ratio of total t/s, engine over raw, of
//! the interleaved pairs. See docs/BENCHMARKS.md ("Batched").

#[path = "bench_model.rs"]
mod bench_model;
#[path = "../examples/common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "tps_report.rs"]
mod report;

use bench_model::resolve_model;
use common::args::ArgResult;
use llama_rs::sys;
use llama_rs::{
    ContextParams, Engine, EngineParams, EngineStatus, Event, FlashAttention, KvType, Model, ModelParams, Request,
    SamplingParams, SplitMode, StopReason, Token,
};
use report::{fmt_params, fmt_size, json_str, mean_stddev, Build};
use std::io::Write;
use std::marker::PhantomData;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error>;

const USAGE: &str = "\
usage: cargo bench --bench batched -- [options]

llama-batched-bench's method and columns, from Rust: for each combination of -npp, -ntg and -npl,
npl sequences of npp prompt tokens then ntg generated tokens, decoded together, measured through
raw llama_sys calls and through the serving Engine (npl slots), interleaved, on one model load.

options:
  -h, --help                  this text
  -m, --model <path>          a GGUF model, or synthetic:<shape>[:<type>] with shape tiny|small|8b|70b
                              and type f32|f16|q8_0|q4_k|q6_k|q4_k_m (random weights, written once
                              into the fixture folder). Default: synthetic:small:q4_k_m
  -npp <n,...>                prompt tokens per sequence (default 128)
  -ntg <n,...>                generated tokens per sequence (default 32)
  -npl <n,...>                parallel sequences (default 1,4,16)
  -pps                        one prompt shared by the sequences (N_KV = npp + npl*ntg)
  -c, --ctx-size <n>          KV cells of each context (default 0 = per npl: npl * (max npp + max ntg
                              + 1) rounded up to 256); combinations that do not fit are skipped
  -b, --batch-size <n>        n_batch, also the engine's step_tokens (default 2048)
  -ub, --ubatch-size <n>      n_ubatch (default 512)
  -ngl, --n-gpu-layers <n>    layers on the GPUs (default 99 = all; ignored without GPUs)
  -sm, --split-mode <m>       none|layer|row|tensor (default layer)
  -ts, --tensor-split <s>     share per GPU, e.g. 3/1 or 3,1 (default: llama.cpp's)
  -mg, --main-gpu <i>         GPU for -sm none (default 0)
  -fa, --flash-attn <f>       auto|on|off, also 1|0|-1 (default auto)
  -ctk, --cache-type-k <t>    K cache type: f32|f16|bf16|q8_0|q4_0|q4_1|iq4_nl|q5_0|q5_1 (default f16)
  -ctv, --cache-type-v <t>    V cache type (default f16)
  -t, --threads <n>           CPU threads (default: all available)
  -r, --repetitions <n>       timed runs per side and combination, raw and engine interleaved, after
                              one warm-up run each (default 3)
  -o, --output <f>            md|json|jsonl (default md); json: an array of records on stdout,
                              jsonl: one record per line (batched-bench's --output-format jsonl);
                              everything else on stderr
  --timeout <s>               fail when the engine sends no event for this long (default 600)

environment:
  LLAMA_BATCHED_BENCH_ARGS    the same options as one string, read before the command line; an
                              option given on the command line replaces its value from there.
                              e.g. LLAMA_BATCHED_BENCH_ARGS='-npp 512 -ntg 128' cargo bench --bench batched
  LLAMA_RS_FIXTURE_DIR        where synthetic models are written (default: the build's fixture folder)
  RUST_LOG                    llama.cpp's log lines (target llama_cpp), e.g. RUST_LOG=llama_cpp=info

Method and output: docs/BENCHMARKS.md (\"Batched\").";

const DEFAULT_MODEL: &str = "synthetic:small:q4_k_m";
const ENV_ARGS: &str = "LLAMA_BATCHED_BENCH_ARGS";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Md,
    Json,
    Jsonl,
}

#[derive(Clone, Debug)]
struct Args {
    model: String,
    n_ctx: Option<u32>,
    n_batch: u32,
    n_ubatch: u32,
    npp: Vec<u32>,
    ntg: Vec<u32>,
    npl: Vec<u32>,
    pps: bool,
    ngl: i32,
    split: SplitMode,
    main_gpu: usize,
    tensor_split: Vec<f32>,
    flash_attn: FlashAttention,
    type_k: KvType,
    type_v: KvType,
    threads: u32,
    reps: usize,
    output: Output,
    timeout: Duration,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            model: DEFAULT_MODEL.into(),
            n_ctx: None,
            n_batch: 2048,
            n_ubatch: 512,
            npp: vec![128],
            ntg: vec![32],
            npl: vec![1, 4, 16],
            pps: false,
            ngl: 99,
            split: SplitMode::Layer,
            main_gpu: 0,
            tensor_split: Vec::new(),
            flash_attn: FlashAttention::Auto,
            type_k: KvType::F16,
            type_v: KvType::F16,
            threads: std::thread::available_parallelism().map_or(4, |n| n.get() as u32),
            reps: 3,
            output: Output::Md,
            timeout: Duration::from_secs(600),
        }
    }
}

/// Canonical name of a flag (aliases folded), and whether it takes a value.
fn canonical(flag: &str) -> Option<(&'static str, bool)> {
    Some(match flag {
        "--bench" => ("--bench", false),
        "-pps" => ("-pps", false),
        "-m" | "--model" => ("-m", true),
        "-c" | "--ctx-size" => ("-c", true),
        "-b" | "--batch-size" => ("-b", true),
        "-ub" | "--ubatch-size" => ("-ub", true),
        "-npp" => ("-npp", true),
        "-ntg" => ("-ntg", true),
        "-npl" => ("-npl", true),
        "-ngl" | "--n-gpu-layers" | "--gpu-layers" => ("-ngl", true),
        "-sm" | "--split-mode" => ("-sm", true),
        "-ts" | "--tensor-split" => ("-ts", true),
        "-mg" | "--main-gpu" => ("-mg", true),
        "-fa" | "--flash-attn" => ("-fa", true),
        "-ctk" | "--cache-type-k" => ("-ctk", true),
        "-ctv" | "--cache-type-v" => ("-ctv", true),
        "-t" | "--threads" => ("-t", true),
        "-r" | "--repetitions" => ("-r", true),
        "-o" | "--output" | "--output-format" => ("-o", true),
        "--timeout" => ("--timeout", true),
        _ => return None,
    })
}

fn num<T: std::str::FromStr>(flag: &str, s: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    s.trim().parse::<T>().map_err(|e| format!("{flag} {s:?}: {e}"))
}

fn positive(flag: &str, s: &str) -> Result<u32, String> {
    match num::<u32>(flag, s)? {
        0 => Err(format!("{flag} {s:?}: must be at least 1")),
        n => Ok(n),
    }
}

/// Parses `LLAMA_BATCHED_BENCH_ARGS` (whitespace-separated) then the command
/// line; `-h` in either comes back as [`ArgError::Help`](common::args::ArgError::Help).
fn parse(env: Option<&str>, cli: &[String]) -> ArgResult<Args> {
    let all = common::args::env_then_cli(ENV_ARGS, env, cli, canonical)?;
    let mut a = Args::default();
    let mut seen: Vec<&'static str> = Vec::new();
    for (flag, value) in all {
        // Lists: the first occurrence replaces the default, later ones append.
        let first = !seen.contains(&flag);
        if first {
            seen.push(flag);
        }
        let list = |min: u32| -> Result<Vec<u32>, String> {
            value
                .split(',')
                .map(|v| match num::<u32>(flag, v)? {
                    n if n < min => Err(format!("{flag} {v:?}: must be at least {min}")),
                    n => Ok(n),
                })
                .collect()
        };
        match flag {
            "--bench" => {} // added by `cargo bench` to harness = false targets
            "-pps" => a.pps = true,
            "-m" if value.is_empty() => return Err("-m: empty model path".into()),
            "-m" => a.model = value,
            "-c" => a.n_ctx = Some(num::<u32>(flag, &value)?).filter(|&n| n > 0),
            "-b" => a.n_batch = positive(flag, &value)?,
            "-ub" => a.n_ubatch = positive(flag, &value)?,
            "-npp" | "-ntg" | "-npl" => {
                // A prompt needs a token; ntg may be 0 (prompt only).
                let v = list(if flag == "-ntg" { 0 } else { 1 })?;
                let field = match flag {
                    "-npp" => &mut a.npp,
                    "-ntg" => &mut a.ntg,
                    _ => &mut a.npl,
                };
                if first {
                    *field = v;
                } else {
                    field.extend(v);
                }
            }
            "-ngl" => a.ngl = num::<i32>(flag, &value)?,
            "-sm" => a.split = value.parse::<SplitMode>().map_err(|e| format!("-sm: {e}"))?,
            "-ts" => {
                a.tensor_split =
                    value.split(['/', ',']).map(|x| num::<f32>(flag, x)).collect::<Result<Vec<f32>, String>>()?;
            }
            "-mg" => a.main_gpu = num::<usize>(flag, &value)?,
            "-fa" => a.flash_attn = value.parse::<FlashAttention>().map_err(|e| format!("-fa: {e}"))?,
            "-ctk" => a.type_k = value.parse::<KvType>().map_err(|e| format!("-ctk: {e}"))?,
            "-ctv" => a.type_v = value.parse::<KvType>().map_err(|e| format!("-ctv: {e}"))?,
            "-t" => a.threads = positive(flag, &value)?,
            "-r" => a.reps = positive(flag, &value)? as usize,
            "-o" => {
                a.output = match value.as_str() {
                    "md" => Output::Md,
                    "json" => Output::Json,
                    "jsonl" => Output::Jsonl,
                    v => return Err(format!("-o {v:?}: expected md, json or jsonl").into()),
                }
            }
            "--timeout" => a.timeout = Duration::from_secs(positive(flag, &value)?.into()),
            _ => unreachable!("canonical() lists every flag"),
        }
    }
    Ok(a)
}

fn fa_code(fa: FlashAttention) -> i32 {
    // llama.cpp's llama_flash_attn_type values, as batched-bench prints them.
    match fa {
        FlashAttention::Auto => -1,
        FlashAttention::Off => 0,
        FlashAttention::On => 1,
    }
}

fn fa_name(fa: FlashAttention) -> &'static str {
    match fa {
        FlashAttention::Auto => "auto",
        FlashAttention::On => "on",
        FlashAttention::Off => "off",
    }
}

/// Random token ids, `rand() % n_vocab` as batched-bench (no BOS: both sides
/// get the same raw tokens).
struct Rng(u64);

impl Rng {
    fn token(&mut self, n_vocab: i32) -> i32 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as i32 % n_vocab
    }

    /// One prompt per sequence; with `shared`, the same one for all.
    fn prompts(&mut self, npl: usize, npp: usize, shared: bool, n_vocab: i32) -> Vec<Vec<i32>> {
        let mut out: Vec<Vec<i32>> = Vec::with_capacity(npl);
        for j in 0..npl {
            if shared && j > 0 {
                out.push(out[0].clone());
            } else {
                out.push((0..npp).map(|_| self.token(n_vocab)).collect());
            }
        }
        out
    }
}

/// Index of the largest logit (the first of equal ones, as llama.cpp's
/// greedy sampler).
fn argmax(row: &[f32]) -> i32 {
    let (mut best, mut max) = (0, f32::NEG_INFINITY);
    for (i, &l) in row.iter().enumerate() {
        if l > max {
            max = l;
            best = i;
        }
    }
    best as i32
}

/// One timed run of one side: times from the start, and the greedy tokens
/// of each sequence (ntg + 1: the first after the prompt, then one per step).
struct RunResult {
    t_pp: Duration,
    t: Duration,
    tokens: Vec<Vec<i32>>,
    /// `llama_decode` calls (the engine's decode steps).
    steps: u64,
    /// Engine only: prompt tokens found in the cache (prefix reuse).
    cached: usize,
}

/// The raw side: a context and one big batch through the C API, the loop of
/// llama-batched-bench with greedy sampling added.
struct RawBatched<'m> {
    ctx: *mut sys::llama_context,
    batch: sys::llama_batch,
    cap: usize,
    n_batch: usize,
    n_vocab: usize,
    /// (batch index, sequence) of the rows whose logits are read, in order.
    wants: Vec<(usize, usize)>,
    /// `llama_decode` calls so far.
    decodes: u64,
    _model: PhantomData<&'m Model>,
}

impl<'m> RawBatched<'m> {
    /// A context with `params` (as `ContextParams::to_raw` gives them to
    /// llama.cpp) and a batch of `cap` tokens.
    fn new(model: &'m Model, params: &ContextParams, cap: usize) -> Result<RawBatched<'m>, String> {
        let m = model.as_raw_ptr();
        let cp = params.to_raw(model);
        // SAFETY: `m` is a live model, borrowed for the life of this context;
        // the safe API accepted the same parameters for the engine's context.
        let ctx = unsafe { sys::llama_init_from_model(m, cp) };
        if ctx.is_null() {
            return Err("llama_init_from_model returned NULL".into());
        }
        // SAFETY: live context and model; the batch is freed in Drop.
        unsafe {
            let n_batch = sys::llama_n_batch(ctx) as usize;
            let cap = cap.max(n_batch).max(1);
            Ok(RawBatched {
                ctx,
                batch: sys::llama_batch_init(cap as i32, 0, 1),
                cap,
                n_batch,
                n_vocab: sys::llama_vocab_n_tokens(sys::llama_model_get_vocab(m)) as usize,
                wants: Vec::new(),
                decodes: 0,
                _model: PhantomData,
            })
        }
    }

    fn n_ctx(&self) -> u32 {
        // SAFETY: live context.
        unsafe { sys::llama_n_ctx(self.ctx) }
    }

    fn mem(&self) -> sys::llama_memory_t {
        // SAFETY: live context.
        unsafe { sys::llama_get_memory(self.ctx) }
    }

    fn clear_batch(&mut self) {
        self.batch.n_tokens = 0;
        self.wants.clear();
    }

    fn add(&mut self, token: i32, pos: i32, seq: usize, logits: bool) {
        let i = self.batch.n_tokens as usize;
        assert!(i < self.cap, "batch of {} tokens is full", self.cap);
        let b = &mut self.batch;
        // SAFETY: the batch was allocated for `cap` > i tokens of one sequence each.
        unsafe {
            *b.token.add(i) = token;
            *b.pos.add(i) = pos;
            *b.n_seq_id.add(i) = 1;
            *(*b.seq_id.add(i)) = seq as i32;
            *b.logits.add(i) = logits as i8;
        }
        b.n_tokens += 1;
        if logits {
            self.wants.push((i, seq));
        }
    }

    /// batched-bench's `decode_helper`: the batch in views of n_batch tokens,
    /// each synchronized; after each view, the greedy token of every row
    /// with logits in it goes to `next[seq]`.
    fn decode(&mut self, next: &mut [i32]) -> Result<(), String> {
        let n = self.batch.n_tokens as usize;
        let (mut start, mut w) = (0, 0);
        while start < n {
            let k = self.n_batch.min(n - start);
            let b = &self.batch;
            // SAFETY: a view of `k` filled entries from `start` of the batch's
            // arrays; valid token ids, positions and sequences below n_seq_max;
            // the context was made for n_batch tokens per call.
            let ret = unsafe {
                let view = sys::llama_batch {
                    n_tokens: k as i32,
                    token: b.token.add(start),
                    embd: std::ptr::null_mut(),
                    pos: b.pos.add(start),
                    n_seq_id: b.n_seq_id.add(start),
                    seq_id: b.seq_id.add(start),
                    logits: b.logits.add(start),
                };
                let ret = sys::llama_decode(self.ctx, view);
                sys::llama_synchronize(self.ctx);
                ret
            };
            self.decodes += 1;
            if ret != 0 {
                return Err(format!("llama_decode returned {ret}"));
            }
            while w < self.wants.len() && self.wants[w].0 < start + k {
                let (i, seq) = self.wants[w];
                let row = (i - start) as i32;
                // SAFETY: row `row` of this view was marked for logits.
                let p = unsafe { sys::llama_get_logits_ith(self.ctx, row) };
                if p.is_null() {
                    return Err(format!("no logits for row {row}"));
                }
                // SAFETY: llama.cpp returns n_vocab floats, valid until the next decode.
                next[seq] = argmax(unsafe { std::slice::from_raw_parts(p, self.n_vocab) });
                w += 1;
            }
            start += k;
        }
        Ok(())
    }

    /// batched-bench's warm-up: 16 tokens on sequence 0, then a clear.
    fn warm_up(&mut self) -> Result<(), String> {
        self.clear_batch();
        for i in 0..16 {
            self.add(0, i, 0, false);
        }
        self.decode(&mut [])?;
        // SAFETY: live context.
        unsafe { sys::llama_memory_clear(self.mem(), false) };
        Ok(())
    }

    /// One run: the prompts (with `shared`, the first one, copied to the
    /// other sequences), then `ntg` steps of one token per sequence.
    fn run(&mut self, prompts: &[Vec<i32>], ntg: usize, shared: bool) -> Result<RunResult, String> {
        let npl = prompts.len();
        let npp = prompts[0].len();
        self.clear_batch();
        for (j, p) in prompts.iter().enumerate().take(if shared { 1 } else { npl }) {
            for (i, &t) in p.iter().enumerate() {
                self.add(t, i as i32, j, i + 1 == npp);
            }
        }
        let mut next = vec![0i32; npl];
        let decodes = self.decodes;
        let mut cur = vec![0i32; npl];
        let mut tokens: Vec<Vec<i32>> = (0..npl).map(|_| Vec::with_capacity(ntg + 1)).collect();
        let t0 = Instant::now();
        // SAFETY: live context.
        unsafe { sys::llama_memory_clear(self.mem(), false) };
        self.decode(&mut next)?;
        if shared {
            for j in 1..npl {
                // SAFETY: live context; sequences below n_seq_max.
                unsafe { sys::llama_memory_seq_cp(self.mem(), 0, j as i32, -1, -1) };
                next[j] = next[0];
            }
        }
        let t_pp = t0.elapsed();
        for (j, t) in tokens.iter_mut().enumerate() {
            t.push(next[j]);
        }
        for step in 0..ntg {
            self.clear_batch();
            cur.copy_from_slice(&next);
            for (j, &t) in cur.iter().enumerate() {
                self.add(t, (npp + step) as i32, j, true);
            }
            self.decode(&mut next)?;
            for (j, t) in tokens.iter_mut().enumerate() {
                t.push(next[j]);
            }
        }
        let t = t0.elapsed();
        Ok(RunResult { t_pp, t, tokens, steps: self.decodes - decodes, cached: 0 })
    }
}

impl Drop for RawBatched<'_> {
    fn drop(&mut self) {
        // SAFETY: allocated by llama_batch_init / llama_init_from_model, freed once.
        unsafe {
            sys::llama_batch_free(self.batch);
            sys::llama_free(self.ctx);
        }
    }
}

/// The engine side.
struct EngineSide {
    engine: Engine,
    /// Requests submitted so far (to know when the engine is idle).
    submitted: u64,
    timeout: Duration,
}

impl EngineSide {
    /// The status once every submitted request is finished and published.
    fn idle_status(&self) -> Result<EngineStatus, String> {
        let t0 = Instant::now();
        loop {
            let s = self.engine.status();
            if s.finished >= self.submitted && s.active == 0 && s.queued == 0 {
                return Ok(s);
            }
            if t0.elapsed() > self.timeout {
                return Err(format!("the engine did not go idle in {} s: {s:?}", self.timeout.as_secs()));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// One run: `prompts.len()` requests submitted at once, each of
    /// `max_tokens(ntg + 1)`, greedy, ignoring end-of-generation.
    fn run(&mut self, prompts: &[Vec<i32>], ntg: usize) -> Result<RunResult, String> {
        let npp = prompts[0].len();
        let before = self.idle_status()?;
        let requests: Vec<Request> = prompts
            .iter()
            .map(|p| {
                Request::tokens(p.iter().map(|&t| Token(t)).collect::<Vec<Token>>())
                    .sampling(SamplingParams::greedy())
                    .max_tokens(ntg + 1)
                    .ignore_eos(true)
            })
            .collect();
        // One submit for all: the requests reach the engine's thread together
        // and start in the same step, as batched-bench's sequences do.
        let n = requests.len();
        let t0 = Instant::now();
        let handles = self.engine.submit_all(requests).map_err(|e| format!("engine: submit_all: {e}"))?;
        self.submitted += n as u64;
        let mut done = Vec::with_capacity(handles.len());
        for (j, h) in handles.iter().enumerate() {
            let mut tokens = Vec::with_capacity(ntg + 1);
            loop {
                match h.recv_timeout(self.timeout) {
                    Err(()) => {
                        return Err(format!(
                            "engine: no event for {} s from request {j} of {} ({} tokens so far); engine status {:?}",
                            self.timeout.as_secs(),
                            handles.len(),
                            tokens.len(),
                            self.engine.status()
                        ))
                    }
                    Ok(None) => return Err(format!("engine: request {j}: events ended without Done or Failed")),
                    Ok(Some(Event::Piece(p))) => tokens.push(p.token.0),
                    Ok(Some(Event::Done(f))) => {
                        done.push((tokens, f));
                        break;
                    }
                    Ok(Some(Event::Failed(e))) => return Err(format!("engine: request {j} failed: {e}")),
                }
            }
        }
        let t = t0.elapsed();
        let mut t_pp = Duration::ZERO;
        let mut cached = 0;
        for (j, (tokens, f)) in done.iter().enumerate() {
            let s = &f.stats;
            if tokens.len() != ntg + 1 || s.generated_tokens != ntg + 1 || f.stop_reason != StopReason::MaxTokens {
                return Err(format!(
                    "engine: request {j}: {} tokens streamed, stats say {}, stop reason {:?}; expected {} and MaxTokens",
                    tokens.len(),
                    s.generated_tokens,
                    f.stop_reason,
                    ntg + 1
                ));
            }
            if s.prompt_tokens != npp {
                return Err(format!("engine: request {j}: prompt_tokens {} instead of {npp}", s.prompt_tokens));
            }
            // From submit_all's clock reading (microseconds after t0).
            t_pp = t_pp.max(s.time_to_first_token);
            cached += s.cached_tokens;
        }
        let tokens = done.into_iter().map(|(t, _)| t).collect();
        let after = self.idle_status()?;
        Ok(RunResult { t_pp: t_pp.min(t), t, tokens, steps: after.steps - before.steps, cached })
    }

    /// A warm-up request (16 tokens, one generated), as batched-bench's.
    fn warm_up(&mut self, n_vocab: i32) -> Result<(), String> {
        let mut rng = Rng(0x3a3a);
        let prompt = rng.prompts(1, 16, false, n_vocab);
        self.run(&prompt, 0).map(|_| ())
    }
}

/// The samples of one side for one combination.
#[derive(Default)]
struct Samples {
    t_pp: Vec<f64>,
    t_tg: Vec<f64>,
    t: Vec<f64>,
    steps: Vec<u64>,
    cached: Vec<usize>,
}

impl Samples {
    fn push(&mut self, r: &RunResult) {
        let (pp, t) = (r.t_pp.as_secs_f64(), r.t.as_secs_f64());
        self.t_pp.push(pp);
        self.t_tg.push((t - pp).max(0.0));
        self.t.push(t);
        self.steps.push(r.steps);
        self.cached.push(r.cached);
    }
}

/// One combination.
#[derive(Clone, Copy)]
struct Combo {
    npp: usize,
    ntg: usize,
    npl: usize,
    shared: bool,
}

impl Combo {
    /// batched-bench's N_KV.
    fn n_kv(&self) -> usize {
        if self.shared {
            self.npp + self.npl * self.ntg
        } else {
            self.npl * (self.npp + self.ntg)
        }
    }
    fn pp_tokens(&self) -> usize {
        if self.shared {
            self.npp
        } else {
            self.npl * self.npp
        }
    }
}

fn rate(n: usize, t: f64) -> f64 {
    if t > 0.0 {
        n as f64 / t
    } else {
        0.0
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

const MD_HEADER: &str = "\
| api    |    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
|--------|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|";

/// Mean times of the samples, speeds from them (batched-bench's columns).
struct Figures {
    t_pp: f64,
    s_pp: f64,
    t_tg: f64,
    s_tg: f64,
    t: f64,
    s: f64,
}

fn figures(c: &Combo, s: &Samples) -> Figures {
    let (t_pp, t_tg, t) = (mean_stddev(&s.t_pp).0, mean_stddev(&s.t_tg).0, mean_stddev(&s.t).0);
    Figures { t_pp, s_pp: rate(c.pp_tokens(), t_pp), t_tg, s_tg: rate(c.npl * c.ntg, t_tg), t, s: rate(c.n_kv(), t) }
}

fn md_row(api: &str, c: &Combo, f: &Figures) -> String {
    format!(
        "| {api:<6} |{:>6} | {:>6} | {:>4} | {:>6} | {:>8.3} | {:>8.2} | {:>8.3} | {:>8.2} | {:>8.3} | {:>8.2} |",
        c.npp,
        c.ntg,
        c.npl,
        c.n_kv(),
        f.t_pp,
        f.s_pp,
        f.t_tg,
        f.s_tg,
        f.t,
        f.s
    )
}

fn json_f64(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.6}")
    } else {
        "null".into()
    }
}

/// What every record of the run shares.
struct RecordBase {
    build: Build,
    model_filename: String,
    model_type: String,
    synthetic: bool,
    model_size: u64,
    model_n_params: u64,
    backend: String,
}

/// batched-bench's JSONL fields, plus `api`, the samples and the build.
fn json_record(b: &RecordBase, a: &Args, n_ctx: u32, c: &Combo, api: &str, s: &Samples) -> String {
    let f = figures(c, s);
    let list = |v: &[f64]| format!("[{}]", v.iter().map(|&x| json_f64(x)).collect::<Vec<_>>().join(", "));
    let fields: Vec<(&str, String)> = vec![
        ("api", json_str(api)),
        ("n_kv_max", n_ctx.to_string()),
        ("n_batch", a.n_batch.to_string()),
        ("n_ubatch", a.n_ubatch.to_string()),
        ("flash_attn", fa_code(a.flash_attn).to_string()),
        ("is_pp_shared", i32::from(a.pps).to_string()),
        ("n_gpu_layers", a.ngl.to_string()),
        ("n_threads", a.threads.to_string()),
        ("n_threads_batch", a.threads.to_string()),
        ("pp", c.npp.to_string()),
        ("tg", c.ntg.to_string()),
        ("pl", c.npl.to_string()),
        ("n_kv", c.n_kv().to_string()),
        ("t_pp", json_f64(f.t_pp)),
        ("speed_pp", json_f64(f.s_pp)),
        ("t_tg", json_f64(f.t_tg)),
        ("speed_tg", json_f64(f.s_tg)),
        ("t", json_f64(f.t)),
        ("speed", json_f64(f.s)),
        ("repetitions", s.t.len().to_string()),
        ("samples_t_pp", list(&s.t_pp)),
        ("samples_t_tg", list(&s.t_tg)),
        ("samples_t", list(&s.t)),
        ("decode_steps", format!("[{}]", s.steps.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "))),
        ("cached_tokens", format!("[{}]", s.cached.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "))),
        ("split_mode", json_str(a.split.name())),
        ("type_k", json_str(a.type_k.name())),
        ("type_v", json_str(a.type_v.name())),
        ("model_filename", json_str(&b.model_filename)),
        ("model_type", json_str(&b.model_type)),
        ("synthetic", b.synthetic.to_string()),
        ("model_size", b.model_size.to_string()),
        ("model_n_params", b.model_n_params.to_string()),
        ("backends", json_str(&b.backend)),
        ("build_commit", json_str(&b.build.commit)),
        ("build_features", json_str(&b.build.features)),
        ("llama_cpp_commit", json_str(&b.build.llama_cpp_commit)),
        ("built_backends", json_str(&b.build.backends)),
        ("test_time", json_str(&report::utc_now())),
    ];
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("{}: {v}", json_str(k))).collect();
    format!("{{{}}}", body.join(", "))
}

fn main() -> ExitCode {
    common::log::init("error");
    let cli: Vec<String> = std::env::args().skip(1).collect();
    let env = std::env::var(ENV_ARGS).ok();
    let a = common::args::exit_on_error(USAGE, parse(env.as_deref(), &cli));
    match run(&a) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Returns false if some combination failed (the others still ran).
fn run(a: &Args) -> Result<bool, BoxError> {
    let started = Instant::now();
    let md = a.output == Output::Md;
    let mut out_md = std::io::stdout();
    let mut out_err = std::io::stderr();
    // Human-readable lines: stdout for md, stderr otherwise.
    let info: &mut dyn Write = if md { &mut out_md } else { &mut out_err };

    let gpus = llama_rs::default_gpus(false);
    let build = Build::here();
    build.write_header(info, &gpus)?;

    let spec = resolve_model(&a.model, info)?;
    let params = ModelParams::default()
        .n_gpu_layers(u32::try_from(a.ngl).ok())
        .split_mode(a.split)
        .main_gpu(a.main_gpu)
        .tensor_split(&a.tensor_split);
    let model = Arc::new(
        common::progress::load_model(&spec.path, params)
            .map_err(|e| format!("{} (split mode {}, ngl {}): {e}", spec.path.display(), a.split, a.ngl))?,
    );
    let n_vocab = model.vocab().n_tokens();
    let mut backends: Vec<String> = Vec::new();
    for d in model.devices() {
        if !backends.contains(&d.backend) {
            backends.push(d.backend.clone());
        }
    }
    let backend = if backends.is_empty() { "CPU".to_string() } else { backends.join(",") };
    let base = RecordBase {
        build,
        model_filename: spec.path.display().to_string(),
        model_type: spec.synthetic_name.clone().unwrap_or_else(|| model.description()),
        synthetic: spec.synthetic_name.is_some(),
        model_size: model.size(),
        model_n_params: model.n_params(),
        backend: backend.clone(),
    };
    writeln!(
        info,
        "model: {} | {} | {} params | backend {backend} | ngl {} | sm {}",
        base.model_type,
        fmt_size(base.model_size),
        fmt_params(base.model_n_params),
        a.ngl,
        a.split
    )?;
    writeln!(
        info,
        "n_kv_max = {}, n_batch = {}, n_ubatch = {}, flash_attn = {}, is_pp_shared = {}, n_gpu_layers = {}, \
         n_threads = {}, n_threads_batch = {}",
        a.n_ctx.map_or_else(|| "per npl".to_string(), |c| c.to_string()),
        a.n_batch,
        a.n_ubatch,
        fa_name(a.flash_attn),
        i32::from(a.pps),
        a.ngl,
        a.threads,
        a.threads
    )?;
    writeln!(
        info,
        "repetitions: {} per side after one warm-up run each, raw and engine interleaved; times are means",
        a.reps
    )?;

    let max_npp = *a.npp.iter().max().unwrap_or(&1) as usize;
    let max_ntg = *a.ntg.iter().max().unwrap_or(&0) as usize;
    let mut ok = true;
    let mut records: Vec<String> = Vec::new();
    let mut rng = Rng(0x5eed_ba7c);
    for &npl in &a.npl {
        let npl = npl as usize;
        let n_ctx = a.n_ctx.unwrap_or_else(|| (npl * (max_npp + max_ntg + 1)).div_ceil(256) as u32 * 256);
        let cp = ContextParams::default()
            .n_ctx(n_ctx)
            .n_batch(a.n_batch)
            .n_ubatch(a.n_ubatch)
            .threads(a.threads)
            .flash_attention(a.flash_attn)
            .type_k(a.type_k)
            .type_v(a.type_v);
        writeln!(info)?;
        // The engine first: its context is checked by the safe API.
        let ep = EngineParams::default().context(cp.clone()).n_slots(npl as u32).step_tokens(a.n_batch.min(n_ctx));
        let mut eng = match Engine::new(model.clone(), ep) {
            Ok(engine) => EngineSide { engine, submitted: 0, timeout: a.timeout },
            Err(e) => {
                eprintln!("error: npl {npl}: engine with {npl} slots, n_ctx {n_ctx}: {e}");
                ok = false;
                continue;
            }
        };
        let mut raw = match RawBatched::new(&model, &cp.clone().n_seq_max(npl as u32).kv_unified(true), npl * max_npp) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: npl {npl}: raw context: {e}");
                ok = false;
                continue;
            }
        };
        let n_ctx = raw.n_ctx();
        writeln!(
            info,
            "npl {npl}: n_ctx {n_ctx} per context (raw: n_seq_max {npl}, kv_unified; engine: {npl} slot(s) of {} cells, \
             step_tokens {})",
            eng.engine.n_ctx_per_request(),
            raw.n_batch
        )?;
        if let Err(e) = raw.warm_up().and_then(|()| eng.warm_up(n_vocab)) {
            eprintln!("error: npl {npl}: warm-up: {e}");
            ok = false;
            continue;
        }
        if md {
            println!("\n{MD_HEADER}");
        }
        let mut ratios = (Vec::new(), Vec::new(), Vec::new()); // total, pp, tg
        let (mut same, mut compared) = (0usize, 0usize);
        let (mut steps, mut raw_decodes, mut cached) = (Vec::new(), Vec::new(), 0usize);
        let mut notes: Vec<String> = Vec::new();
        for &npp in &a.npp {
            for &ntg in &a.ntg {
                let c = Combo { npp: npp as usize, ntg: ntg as usize, npl, shared: a.pps };
                let raw_need = c.n_kv();
                // The engine: a prompt shorter than a slot's share, and room
                // for the ntg decoded tokens (the last sampled one is not).
                let slot_need = c.npp + c.ntg.max(1);
                if raw_need > n_ctx as usize || slot_need > eng.engine.n_ctx_per_request() {
                    notes.push(format!(
                        "skipped PP {npp} TG {ntg} B {npl}: needs {raw_need} cells (raw) and {slot_need} per slot \
                         (engine); n_ctx is {n_ctx} (give a larger -c)"
                    ));
                    continue;
                }
                let (mut rs, mut es) = (Samples::default(), Samples::default());
                let mut failed = None;
                // One warm-up run each, then interleaved pairs (raw first in
                // even pairs, engine first in odd ones) on the same prompts.
                for k in 0..=a.reps {
                    let prompts = rng.prompts(npl, c.npp, c.shared, n_vocab);
                    let order = if k % 2 == 0 { [true, false] } else { [false, true] };
                    let mut pair: [Option<RunResult>; 2] = [None, None];
                    for is_raw in order {
                        let r = if is_raw { raw.run(&prompts, c.ntg, c.shared) } else { eng.run(&prompts, c.ntg) };
                        match r {
                            Ok(r) => pair[usize::from(!is_raw)] = Some(r),
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    let [Some(r), Some(e)] = pair else { break };
                    if k == 0 {
                        continue; // warm-up
                    }
                    rs.push(&r);
                    es.push(&e);
                    ratios.0.push(r.t.as_secs_f64() / e.t.as_secs_f64());
                    ratios.1.push(r.t_pp.as_secs_f64() / e.t_pp.as_secs_f64());
                    if c.ntg > 0 {
                        ratios.2.push((r.t - r.t_pp).as_secs_f64() / (e.t - e.t_pp).as_secs_f64());
                    }
                    compared += npl;
                    same += r.tokens.iter().zip(&e.tokens).filter(|(x, y)| x == y).count();
                    steps.push(e.steps);
                    cached += e.cached;
                    raw_decodes.push(r.steps);
                }
                if let Some(e) = failed {
                    eprintln!("error: PP {npp} TG {ntg} B {npl}: {e}");
                    ok = false;
                    continue;
                }
                for (api, s) in [("raw", &rs), ("engine", &es)] {
                    match a.output {
                        Output::Md => println!("{}", md_row(api, &c, &figures(&c, s))),
                        Output::Jsonl => println!("{}", json_record(&base, a, n_ctx, &c, api, s)),
                        Output::Json => records.push(json_record(&base, a, n_ctx, &c, api, s)),
                    }
                }
            }
        }
        if !notes.is_empty() {
            writeln!(info)?;
            for n in &notes {
                writeln!(info, "{n}")?;
            }
        }
        if !ratios.0.is_empty() {
            writeln!(info)?;
            writeln!(info, "overhead batched: engine/raw = {:.3} (npl {npl}, total t/s)", median(ratios.0.clone()))?;
            let tg = if ratios.2.is_empty() { "-".to_string() } else { format!("{:.3}", median(ratios.2.clone())) };
            let mean_steps = steps.iter().sum::<u64>() as f64 / steps.len().max(1) as f64;
            let mean_decodes = raw_decodes.iter().sum::<u64>() as f64 / raw_decodes.len().max(1) as f64;
            let cached =
                if cached > 0 { format!("; engine prompt tokens found in the cache: {cached}") } else { String::new() };
            writeln!(
                info,
                "  pp {:.3}, tg {tg} (medians of {} interleaved pairs); decodes per run: engine {mean_steps:.1}, \
                 raw {mean_decodes:.1}; greedy tokens identical in {same} of {compared} sequences{cached}",
                median(ratios.1.clone()),
                ratios.0.len()
            )?;
        }
    }
    if a.output == Output::Json {
        println!("[\n  {}\n]", records.join(",\n  "));
    }
    writeln!(info, "\ntotal time: {:.1} s", started.elapsed().as_secs_f64())?;
    Ok(ok)
}
