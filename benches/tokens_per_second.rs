//! Tokens per second the way llama-bench measures them, through the safe
//! llama-rs API, plus the binding's overhead against the raw C API.
//!
//! ```text
//! cargo bench --bench tokens_per_second                      # pp512, tg128 on a small synthetic model
//! cargo bench --bench tokens_per_second -- -h                # every option
//! cargo bench --bench tokens_per_second -- -p 16 -n 4 -r 1   # smoke check
//! LLAMA_BENCH_ARGS='-m model.gguf -sm layer,tensor' cargo bench --bench tokens_per_second
//! ```
//!
//! Method (llama-bench's): per test a context of n_ctx = p + n + d, one
//! warm-up run, then `-r` repetitions, each after clearing the KV cache and
//! (untimed) decoding `-d` tokens; pp = the prompt's random tokens decoded in
//! n_batch chunks, tg = single-token decodes, pg = both; t/s is the mean and
//! sample standard deviation over the repetitions. Unlike llama-bench, the
//! logits of every tg token (and of the last prompt token) are read, as a
//! generation loop would.
//!
//! Then the overhead lines: the same pp and tg loops through raw `llama_sys`
//! calls and through the safe API on one model, interleaved, and the
//! streaming generation API against a raw greedy loop; see docs/BENCHMARKS.md.

#[path = "tps_args.rs"]
mod args;
#[path = "bench_model.rs"]
mod bench_model;
#[path = "../examples/common/mod.rs"]
mod common;
#[path = "tps_raw.rs"]
mod raw;
#[path = "tps_report.rs"]
mod report;

use args::{Args, Output, SplitChoice, Workload};
use bench_model::{resolve_model, ModelSpec};
use llama_rs::{AddSpecial, ParseSpecial};
use llama_rs::{
    Batch, Context, ContextParams, FlashAttention, GenerateParams, Model, ModelParams, Sampler, SplitMode, Token,
};
use raw::{max_logit, RawContext};
use report::{json_record, mean_stddev, Build, Markdown, Row};
use std::hint::black_box;
use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

type BoxError = Box<dyn std::error::Error>;

/// Stop string of the generation overhead test (realistic, and unlikely in
/// the output of a random-weights model).
const STOP: &str = "\nUser:";
/// Prompt of the generation overhead test.
const GEN_PROMPT: &str = "Once upon a time, in a land far away, there lived";

/// Model-level parameters (one model load each).
#[derive(Clone, Debug)]
struct ModelConf {
    model: usize,
    ngl: i32,
    split: SplitChoice,
    main_gpu: usize,
    tensor_split: Vec<f32>,
    rpc: Vec<String>,
}

impl ModelConf {
    fn params(&self, mode: SplitMode) -> ModelParams {
        ModelParams::default()
            .n_gpu_layers(u32::try_from(self.ngl).ok())
            .split_mode(mode)
            .main_gpu(self.main_gpu)
            .tensor_split(&self.tensor_split)
            .rpc_servers(&self.rpc)
    }
}

/// One table row to measure.
#[derive(Clone, Debug)]
struct Test {
    n_batch: u32,
    n_ubatch: u32,
    type_k: llama_rs::KvType,
    type_v: llama_rs::KvType,
    flash_attn: FlashAttention,
    threads: u32,
    depth: u32,
    n_prompt: u32,
    n_gen: u32,
}

impl Test {
    fn context_params(&self) -> ContextParams {
        ContextParams::default()
            .n_batch(self.n_batch)
            .n_ubatch(self.n_ubatch)
            .threads(self.threads)
            .flash_attention(self.flash_attn)
            .type_k(self.type_k)
            .type_v(self.type_v)
    }
}

fn fa_name(fa: FlashAttention) -> &'static str {
    match fa {
        FlashAttention::Auto => "auto",
        FlashAttention::On => "1",
        FlashAttention::Off => "0",
    }
}

/// Model configurations and, for each, its tests, in llama-bench's order.
fn instances(a: &Args, n_models: usize) -> Vec<(ModelConf, Vec<Test>)> {
    let mut out = Vec::new();
    for model in 0..n_models {
        for &ngl in &a.ngl {
            for &split in &a.split {
                for &main_gpu in &a.main_gpu {
                    for ts in &a.tensor_split {
                        let conf =
                            ModelConf { model, ngl, split, main_gpu, tensor_split: ts.clone(), rpc: a.rpc.clone() };
                        let mut tests = Vec::new();
                        for &n_batch in &a.n_batch {
                            for &n_ubatch in &a.n_ubatch {
                                for &type_k in &a.type_k {
                                    for &type_v in &a.type_v {
                                        for &flash_attn in &a.flash_attn {
                                            for &threads in &a.threads {
                                                for &depth in &a.depth {
                                                    let t = Test {
                                                        n_batch,
                                                        n_ubatch,
                                                        type_k,
                                                        type_v,
                                                        flash_attn,
                                                        threads,
                                                        depth,
                                                        n_prompt: 0,
                                                        n_gen: 0,
                                                    };
                                                    let sizes = a.n_prompt.iter().map(|&p| (p, 0));
                                                    let sizes = sizes.chain(a.n_gen.iter().map(|&n| (0, n)));
                                                    for (p, n) in sizes.chain(a.pg.iter().copied()) {
                                                        if p + n > 0 {
                                                            tests.push(Test { n_prompt: p, n_gen: n, ..t.clone() });
                                                        }
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        out.push((conf, tests));
                    }
                }
            }
        }
    }
    out
}

/// Random token ids (llama-bench uses `rand() % n_vocab`), BOS first at
/// position 0 when the model adds one.
struct Tokens {
    state: u64,
    n_vocab: u64,
    bos: Option<Token>,
}

impl Tokens {
    fn new(model: &Model, seed: u64) -> Tokens {
        let v = model.vocab();
        Tokens { state: seed | 1, n_vocab: v.n_tokens() as u64, bos: v.add_bos().then(|| v.bos()).flatten() }
    }

    fn take(&mut self, n: usize, pos: i32) -> Vec<Token> {
        (0..n)
            .map(|i| match self.bos {
                Some(b) if pos == 0 && i == 0 => b,
                _ => {
                    // xorshift64*
                    self.state ^= self.state >> 12;
                    self.state ^= self.state << 25;
                    self.state ^= self.state >> 27;
                    Token((self.state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as i32 % self.n_vocab as i32)
                }
            })
            .collect()
    }
}

/// The safe-API loops (the table and the "safe" side of the overhead lines).
struct Safe {
    batch: Batch,
}

impl Safe {
    fn new(ctx: &Context<'_>) -> Safe {
        Safe { batch: Batch::new(ctx.n_batch() as usize, 1).expect("batch") }
    }

    /// `tokens` in n_batch chunks from `pos`; returns the last token's largest logit.
    fn prompt(&mut self, ctx: &mut Context<'_>, tokens: &[Token], pos: i32) -> llama_rs::Result<f32> {
        let n_batch = self.batch.capacity();
        let n_chunks = tokens.len().div_ceil(n_batch);
        let mut last = 0;
        for (i, chunk) in tokens.chunks(n_batch).enumerate() {
            self.batch.clear();
            self.batch.add_sequence(chunk, pos + (i * n_batch) as i32, 0, i + 1 == n_chunks)?;
            ctx.decode(&mut self.batch)?;
            last = chunk.len() as i32 - 1;
        }
        Ok(max_logit(ctx.logits(last)?))
    }

    /// One decode per token from `pos`, reading each token's logits.
    fn gen(&mut self, ctx: &mut Context<'_>, tokens: &[Token], pos: i32) -> llama_rs::Result<f32> {
        let mut acc = 0.0;
        for (i, &t) in tokens.iter().enumerate() {
            self.batch.clear();
            self.batch.add(t, pos + i as i32, &[0], true)?;
            ctx.decode(&mut self.batch)?;
            acc += max_logit(ctx.logits(0)?);
        }
        Ok(acc)
    }
}

/// Runs one test the llama-bench way; returns nanoseconds per repetition.
fn measure(model: &Model, t: &Test, reps: usize) -> Result<Vec<u64>, BoxError> {
    let (p, n, d) = (t.n_prompt as usize, t.n_gen as usize, t.depth as usize);
    let mut ctx = model.new_context(t.context_params().n_ctx((p + n + d).max(1) as u32))?;
    let mut safe = Safe::new(&ctx);
    let mut rng = Tokens::new(model, 0x5eed);
    // Warm-up.
    if p > 0 {
        black_box(safe.prompt(&mut ctx, &rng.take(p, 0), 0)?);
    }
    if n > 0 {
        black_box(safe.gen(&mut ctx, &rng.take(1, p as i32), p as i32)?);
    }
    let mut samples = Vec::with_capacity(reps);
    for _ in 0..reps {
        ctx.clear_kv(false);
        if d > 0 {
            black_box(safe.prompt(&mut ctx, &rng.take(d, 0), 0)?);
        }
        let prompt = rng.take(p, d as i32);
        let gen = rng.take(n, (d + p) as i32);
        let t0 = Instant::now();
        if p > 0 {
            black_box(safe.prompt(&mut ctx, &prompt, d as i32)?);
        }
        if n > 0 {
            black_box(safe.gen(&mut ctx, &gen, (d + p) as i32)?);
        }
        ctx.synchronize();
        samples.push(t0.elapsed().as_nanos() as u64);
    }
    Ok(samples)
}

fn mean_tps(t: &Test, reps: usize, model: &Model) -> Result<f64, BoxError> {
    let ns = measure(model, t, reps)?;
    let n = (t.n_prompt + t.n_gen) as f64;
    Ok(mean_stddev(&ns.iter().map(|&x| n * 1e9 / x.max(1) as f64).collect::<Vec<_>>()).0)
}

/// `-sm auto`: measures layer and tensor briefly and returns the faster.
fn choose_split(
    spec: &ModelSpec,
    conf: &ModelConf,
    test: &Test,
    a: &Args,
    info: &mut dyn Write,
) -> Result<SplitMode, BoxError> {
    let probe = match a.workload {
        Workload::Pp => {
            let p = a.n_prompt.iter().chain(a.pg.iter().map(|(p, _)| p)).copied().find(|&p| p > 0).unwrap_or(512);
            Test { n_prompt: p.min(512), n_gen: 0, depth: 0, ..test.clone() }
        }
        Workload::Tg => {
            let n = a.n_gen.iter().chain(a.pg.iter().map(|(_, n)| n)).copied().find(|&n| n > 0).unwrap_or(128);
            Test { n_prompt: 0, n_gen: n.min(32), depth: 0, ..test.clone() }
        }
    };
    let label = if probe.n_prompt > 0 { format!("pp{}", probe.n_prompt) } else { format!("tg{}", probe.n_gen) };
    let mut results = Vec::new();
    for mode in [SplitMode::Layer, SplitMode::Tensor] {
        let r = common::progress::load_model(&spec.path, conf.params(mode))
            .map_err(BoxError::from)
            .and_then(|m| mean_tps(&probe, 2, &m));
        results.push((mode, r));
    }
    let mut best: Option<(SplitMode, f64)> = None;
    let mut parts = Vec::new();
    for (mode, r) in &results {
        match r {
            Ok(tps) => {
                parts.push(format!("{mode} {tps:.2} t/s"));
                if best.is_none_or(|(_, b)| *tps > b) {
                    best = Some((*mode, *tps));
                }
            }
            Err(e) => parts.push(format!("{mode} unavailable ({e})")),
        }
    }
    let Some((mode, _)) = best else {
        return Err(format!("split-mode auto: neither layer nor tensor works here: {}", parts.join("; ")).into());
    };
    let w = if a.workload == Workload::Pp { "pp" } else { "tg" };
    writeln!(info, "split-mode auto (workload {w}, probe {label}): {} -> {mode}", parts.join(", "))?;
    Ok(mode)
}

/// Ratio line of interleaved raw/safe runs: the median of the per-pair
/// ratios of t/s (drift cancels within a pair), and both means.
fn ratio_line(label: &str, raw: &[f64], safe: &[f64], what: &str) -> String {
    let mut ratios: Vec<f64> = raw.iter().zip(safe).map(|(r, s)| s / r).collect();
    ratios.sort_by(f64::total_cmp);
    let median = if ratios.len() % 2 == 1 {
        ratios[ratios.len() / 2]
    } else {
        (ratios[ratios.len() / 2 - 1] + ratios[ratios.len() / 2]) / 2.0
    };
    let (rm, rs) = mean_stddev(raw);
    let (sm, ss) = mean_stddev(safe);
    format!(
        "overhead {label}: safe/raw = {median:.3} (safe {sm:.2} ± {ss:.2} t/s, raw {rm:.2} ± {rs:.2} t/s; median of {} interleaved pairs{what})",
        ratios.len()
    )
}

/// The overhead lines: pp and tg loops through raw llama_sys and through the
/// safe API, then streaming generation against a raw greedy loop; all on the
/// same model, with contexts of the same parameters, interleaved.
fn overhead(model: &Model, t: &Test, p: u32, n: u32, rounds: usize) -> Result<Vec<String>, BoxError> {
    let prompt_tokens = model.vocab().tokenize(GEN_PROMPT, AddSpecial::Yes, ParseSpecial::No)?;
    let n_ctx = (p as usize).max(n as usize).max(prompt_tokens.len() + n as usize).max(1) as u32;
    let cp = t.context_params().n_ctx(n_ctx);
    let mut ctx = model.new_context(cp.clone())?;
    let mut raw = RawContext::new(model, &cp)?;
    let mut safe = Safe::new(&ctx);
    let mut rng = Tokens::new(model, 0x0ead);
    let mut lines = Vec::new();

    // Runs `f(raw_side)` pairs in ABBA order; returns (raw t/s, safe t/s).
    let pairs = |f: &mut dyn FnMut(bool) -> Result<f64, BoxError>| -> Result<(Vec<f64>, Vec<f64>), BoxError> {
        f(true)?;
        f(false)?;
        let (mut r, mut s) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            for side in if round % 2 == 0 { [true, false] } else { [false, true] } {
                let tps = f(side)?;
                if side {
                    r.push(tps)
                } else {
                    s.push(tps)
                }
            }
        }
        Ok((r, s))
    };

    if p > 0 {
        let tokens = rng.take(p as usize, 0);
        let ids: Vec<i32> = tokens.iter().map(|t| t.0).collect();
        let (r, s) = pairs(&mut |is_raw| {
            let t0;
            if is_raw {
                raw.clear();
                t0 = Instant::now();
                black_box(raw.prompt(&ids, 0)?);
            } else {
                ctx.clear_kv(false);
                t0 = Instant::now();
                black_box(safe.prompt(&mut ctx, &tokens, 0)?);
            }
            Ok(p as f64 / t0.elapsed().as_secs_f64())
        })?;
        lines.push(ratio_line(&format!("pp{p}"), &r, &s, ""));
    }
    if n > 0 {
        let tokens = rng.take(n as usize, 0);
        let ids: Vec<i32> = tokens.iter().map(|t| t.0).collect();
        let (r, s) = pairs(&mut |is_raw| {
            let t0;
            if is_raw {
                raw.clear();
                t0 = Instant::now();
                black_box(raw.gen(&ids, 0)?);
            } else {
                ctx.clear_kv(false);
                t0 = Instant::now();
                black_box(safe.gen(&mut ctx, &tokens, 0)?);
            }
            Ok(n as f64 / t0.elapsed().as_secs_f64())
        })?;
        lines.push(ratio_line(&format!("tg{n}"), &r, &s, ""));

        // Streaming generation: greedy Sampler, detokenizing, a stop string
        // checked, against decode + argmax + token_to_piece. Timed from the
        // first sample (the prompt is decoded before, untimed, on both sides).
        let ids: Vec<i32> = prompt_tokens.iter().map(|t| t.0).collect();
        let mut sampler = Sampler::greedy(model)?;
        let mut counts = (0usize, 0usize);
        let (r, s) = pairs(&mut |is_raw| {
            if is_raw {
                raw.clear();
                black_box(raw.prompt(&ids, 0)?);
                let mut out = Vec::with_capacity(4096);
                let t0 = Instant::now();
                let k = raw.greedy(ids.len() as i32, ids.len() as i32 - 1, n as usize, &mut out)?;
                let dt = t0.elapsed().as_secs_f64();
                black_box(&out);
                counts.0 = k;
                Ok(k as f64 / dt)
            } else {
                let params = GenerateParams::default().max_tokens(n as usize).stop_string(STOP).clear_kv(true);
                let mut generation = ctx.generate(&mut sampler, &prompt_tokens, params)?;
                let mut text = String::with_capacity(4096);
                let t0 = Instant::now();
                for piece in &mut generation {
                    text.push_str(&piece?.text);
                }
                let dt = t0.elapsed().as_secs_f64();
                black_box(&text);
                let k = generation.stats().map_or(0, |st| st.generated_tokens);
                counts.1 = k;
                Ok(k as f64 / dt)
            }
        })?;
        let what = if counts.0 == counts.1 {
            format!(", {} tokens each", counts.0)
        } else {
            format!(", raw {} tokens, safe {} tokens (stopped differently)", counts.0, counts.1)
        };
        lines.push(ratio_line("generate", &r, &s, &what));
    }
    Ok(lines)
}

fn main() -> ExitCode {
    common::log::init("error");
    let cli: Vec<String> = std::env::args().skip(1).collect();
    let env = std::env::var("LLAMA_BENCH_ARGS").ok();
    let a = common::args::exit_on_error(args::USAGE, args::parse(env.as_deref(), &cli));
    match run(&a) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Returns false if some test failed (the others still ran).
fn run(a: &Args) -> Result<bool, BoxError> {
    let started = Instant::now();
    let json = a.output == Output::Json;
    // Human-readable lines go to stdout for md, to stderr for json.
    let mut out_md = std::io::stdout();
    let mut out_err = std::io::stderr();
    let info: &mut dyn Write = if json { &mut out_err } else { &mut out_md };

    let gpus = llama_rs::default_gpus(false);
    let build = Build::here();
    build.write_header(info, &gpus)?;

    let specs = a.models.iter().map(|m| resolve_model(m, info)).collect::<Result<Vec<_>, _>>()?;
    let plan = instances(a, specs.len());

    // Resolve -sm auto first, so that its lines come before the table.
    let mut chosen: Vec<Option<SplitMode>> = Vec::new();
    for (conf, tests) in &plan {
        chosen.push(match (conf.split, tests.first()) {
            (SplitChoice::Mode(m), _) => Some(m),
            (SplitChoice::Auto, Some(t)) => match choose_split(&specs[conf.model], conf, t, a, info) {
                Ok(m) => Some(m),
                Err(e) => {
                    eprintln!("error: {e}");
                    None
                }
            },
            (SplitChoice::Auto, None) => None,
        });
    }
    writeln!(info, "repetitions: {} after one warm-up run; t/s = mean ± sample stddev", a.reps)?;
    writeln!(info)?;

    let mut extra: Vec<&'static str> = Vec::new();
    if gpus.is_empty() || a.shown.contains(&"-t") {
        extra.push("threads");
    }
    for (flag, col) in [("-b", "n_batch"), ("-ub", "n_ubatch"), ("-ctk", "type_k"), ("-ctv", "type_v"), ("-mg", "mg")] {
        if a.shown.contains(&flag) {
            extra.push(col);
        }
    }
    let model_width = specs.iter().filter_map(|s| s.synthetic_name.as_ref()).map(|n| n.len()).max().unwrap_or(0);
    let md = Markdown::new(&extra, model_width, a.split.contains(&SplitChoice::Auto));
    if !json {
        println!("{}", md.header());
    }

    let mut ok = true;
    let mut rows: Vec<Row> = Vec::new();
    let mut overhead_lines: Option<Vec<String>> = None;
    for ((conf, tests), mode) in plan.iter().zip(&chosen) {
        let Some(mode) = *mode else {
            ok = false;
            continue;
        };
        let spec = &specs[conf.model];
        let model = match common::progress::load_model(&spec.path, conf.params(mode)) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("error: {} (split mode {mode}, ngl {}): {e}", spec.path.display(), conf.ngl);
                ok = false;
                continue;
            }
        };
        let backend = {
            let mut b: Vec<String> = Vec::new();
            for d in model.devices() {
                if !b.contains(&d.backend) {
                    b.push(d.backend.clone());
                }
            }
            if b.is_empty() {
                "CPU".to_string()
            } else {
                b.join(",")
            }
        };
        for t in tests {
            let test_time = report::utc_now();
            match measure(&model, t, a.reps) {
                Ok(samples_ns) => {
                    let row = Row {
                        model_name: spec.synthetic_name.clone().unwrap_or_else(|| model.description()),
                        model_filename: spec.path.display().to_string(),
                        synthetic: spec.synthetic_name.is_some(),
                        size: model.size(),
                        n_params: model.n_params(),
                        backend: backend.clone(),
                        ngl: conf.ngl,
                        threads: t.threads,
                        n_batch: t.n_batch,
                        n_ubatch: t.n_ubatch,
                        type_k: t.type_k.name(),
                        type_v: t.type_v.name(),
                        split_mode: mode.name(),
                        split_auto: conf.split == SplitChoice::Auto,
                        main_gpu: conf.main_gpu,
                        tensor_split: conf.tensor_split.clone(),
                        flash_attn: fa_name(t.flash_attn),
                        n_prompt: t.n_prompt,
                        n_gen: t.n_gen,
                        n_depth: t.depth,
                        test_time,
                        samples_ns,
                    };
                    if !json {
                        println!("{}", md.row(&row));
                    }
                    rows.push(row);
                }
                Err(e) => {
                    eprintln!("error: {} {mode}: test failed: {e}", spec.path.display());
                    ok = false;
                }
            }
        }
        // The overhead lines, once, on the first model that loads.
        if a.overhead && overhead_lines.is_none() {
            if let Some(t) = tests.first() {
                let p = a.n_prompt.iter().chain(a.pg.iter().map(|(p, _)| p)).copied().find(|&p| p > 0).unwrap_or(0);
                let n = a.n_gen.iter().chain(a.pg.iter().map(|(_, n)| n)).copied().find(|&n| n > 0).unwrap_or(0);
                let rounds = a.overhead_reps.unwrap_or(2 * a.reps).max(2);
                match overhead(&model, t, p, n, rounds) {
                    Ok(lines) => overhead_lines = Some(lines),
                    Err(e) => {
                        eprintln!("error: overhead measurement failed: {e}");
                        overhead_lines = Some(Vec::new());
                        ok = false;
                    }
                }
            }
        }
    }

    if json {
        let records: Vec<String> = rows.iter().map(|r| json_record(r, &build)).collect();
        println!("[\n{}\n]", records.join(",\n"));
    }
    let info: &mut dyn Write = if json { &mut out_err } else { &mut out_md };
    writeln!(info)?;
    for line in overhead_lines.unwrap_or_default() {
        writeln!(info, "{line}")?;
    }
    writeln!(info, "total time: {:.1} s", started.elapsed().as_secs_f64())?;
    Ok(ok)
}
