//! GPU tests: split modes none/layer/tensor on every visible GPU count, tensor
//! splits 1:1 and 3:1, per-device memory, logits against the CPU and against
//! one GPU, deterministic greedy generation, KV operations, and the memory
//! plan against what loading really allocated.
//!
//! Compiled everywhere, ignored without a GPU; `scripts/gpu-check` runs them
//! with 1, 2 and 4 GPUs visible (`CUDA_VISIBLE_DEVICES`/`HIP_VISIBLE_DEVICES`).

mod common;

use common::fixture_dir;
use llama_rs::synthetic::{ModelShape, SyntheticModel, VocabKind, WeightType};
use llama_rs::{AddSpecial, ParseSpecial};
use llama_rs::{
    Batch, ContextParams, Device, DeviceMemory, Error, FlashAttention, GenerateParams, Model, ModelParams, Sampler,
    SplitMode, Token,
};
use std::path::PathBuf;

/// Largest |difference| allowed between logits computed on the CPU and on
/// GPUs (or one GPU and several): same math, other kernels and reduction
/// orders; the synthetic models' logits are of order 1.
const TOLERANCE: f32 = 2e-2;
/// What a GPU left out of the device list may still report in use (another
/// test's leftovers, the driver's own bookkeeping).
const UNUSED_SLACK: i64 = 64 << 20;

fn gpus() -> Vec<Device> {
    let g = llama_rs::default_gpus(false);
    assert!(!g.is_empty(), "no GPU is visible: these tests need one (scripts/gpu-check runs them)");
    g
}

fn indices(g: &[Device]) -> Vec<usize> {
    g.iter().map(|d| d.index).collect()
}

/// 8 layers, 8 heads (4 KV), n_embd 512: enough to split across 4 GPUs.
fn small_path() -> PathBuf {
    SyntheticModel::new(ModelShape::small())
        .vocab(VocabKind::Spm)
        .weight_type(WeightType::F16)
        .seed(7)
        .write_cached(fixture_dir())
        .expect("write the small synthetic model")
}

fn prompt(m: &Model) -> Vec<Token> {
    m.vocab()
        .tokenize("the quick brown fox jumps over the lazy dog and runs away", AddSpecial::Yes, ParseSpecial::No)
        .unwrap()
}

fn last_logits(m: &Model, fa: FlashAttention) -> Vec<f32> {
    let tokens = prompt(m);
    let mut c = m.new_context(ContextParams::default().n_ctx(512).flash_attention(fa)).unwrap();
    let mut b = Batch::new(tokens.len(), 1).unwrap();
    b.add_sequence(&tokens, 0, 0, true).unwrap();
    c.decode(&mut b).unwrap();
    c.logits(tokens.len() as i32 - 1).unwrap().to_vec()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn greedy(m: &Model) -> Vec<Token> {
    let mut c = m.new_context(ContextParams::default().n_ctx(512)).unwrap();
    let mut s = Sampler::greedy(m).unwrap();
    let g = c.generate(&mut s, "once upon a time", GenerateParams::default().max_tokens(24)).unwrap();
    g.map(|p| p.unwrap().token).collect()
}

/// seq_rm then re-decode gives the logits of a fresh decode.
fn kv_ops_work(m: &Model) {
    let tokens = prompt(m);
    let keep = 3;
    let mut c = m.new_context(ContextParams::default().n_ctx(512)).unwrap();
    let mut b = Batch::new(tokens.len(), 1).unwrap();
    b.add_sequence(&tokens, 0, 0, true).unwrap();
    c.decode(&mut b).unwrap();
    let fresh = c.logits(tokens.len() as i32 - 1).unwrap().to_vec();
    assert!(c.seq_rm(Some(0), keep as i32..).unwrap());
    assert_eq!(c.seq_pos_max(0).unwrap(), Some(keep as i32 - 1));
    b.clear();
    b.add_sequence(&tokens[keep..], keep as i32, 0, true).unwrap();
    c.decode(&mut b).unwrap();
    let again = c.logits(tokens.len() as i32 - keep as i32 - 1).unwrap();
    let d = max_diff(&fresh, again);
    assert!(d < TOLERANCE, "re-decode after seq_rm differs by {d}");
}

/// Per-device bytes of the model's weights, from llama.cpp's own accounting.
fn weights_per_device(m: &Model) -> Vec<DeviceMemory> {
    let c = m.new_context(ContextParams::default().n_ctx(512)).unwrap();
    let mem = llama_rs::per_device(&c.memory_breakdown().unwrap());
    eprintln!("memory: {mem:?}");
    mem
}

fn bytes_on(mem: &[DeviceMemory], dev: &Device) -> u64 {
    mem.iter().filter(|d| d.device == dev.name).map(|d| d.model).sum()
}

/// Free bytes per device index, as the devices report them.
fn free_memory() -> Vec<u64> {
    llama_rs::devices().iter().map(|d| d.memory_free).collect()
}

/// Bytes each GPU reports more in use now than in `before`.
fn used_since(before: &[u64], g: &[Device]) -> Vec<i64> {
    let now = free_memory();
    g.iter().map(|d| before[d.index] as i64 - now[d.index] as i64).collect()
}

/// Checks one multi-device configuration: loads, each device holds what was
/// asked, logits match one GPU, greedy is deterministic, KV ops work.
fn check_split(mode: SplitMode, split: &[f32], reference: &[f32]) {
    let g = gpus();
    eprintln!("== {mode} on {} GPU(s), tensor split {split:?}", g.len());
    let before = free_memory();
    let p = ModelParams::default().split_mode(mode).devices(&indices(&g)).tensor_split(split);
    let m = Model::load_with(small_path(), p).unwrap_or_else(|e| panic!("{mode} {split:?}: {e}"));
    assert_eq!(m.devices().len(), g.len());
    let c = m.new_context(ContextParams::default().n_ctx(512)).unwrap();
    let used = used_since(&before, &g);
    let mem = llama_rs::per_device(&c.memory_breakdown().unwrap());
    drop(c);
    eprintln!("breakdown: {mem:?}\nreported in use per GPU: {used:?}");
    // What measures a device's share: in layer mode the KV cache (whole
    // layers, llama.cpp's own accounting); in tensor mode llama.cpp accounts
    // everything to one meta device, so the devices' own reports.
    let share: Vec<f64> = match mode {
        SplitMode::Layer => {
            g.iter().map(|d| mem.iter().filter(|m| m.device == d.name).map(|m| m.context).sum::<u64>() as f64).collect()
        }
        _ => used.iter().map(|&u| u as f64).collect(),
    };
    eprintln!("share per GPU: {share:?}");
    let holds: Vec<u64> = match mode {
        SplitMode::Layer => g.iter().map(|d| bytes_on(&mem, d)).collect(),
        _ => used.iter().map(|&u| u.max(0) as u64).collect(),
    };
    assert!(holds.iter().all(|&b| b > 0), "{mode} {split:?}: every GPU holds part of the model: {holds:?}");
    let n = g.len();
    if n >= 2 && split.first() == Some(&3.0) {
        match mode {
            // Whole layers: the first GPU gets the most.
            SplitMode::Layer => {
                let max_other = share[1..].iter().cloned().fold(0.0, f64::max);
                assert!(share[0] >= 1.5 * max_other, "{mode} {split:?}: the first GPU holds the most: {share:?}")
            }
            // Rows of every weight: the first GPU holds (3-1)/(3+n-1) of the
            // weights more than each other GPU; the rest (compute buffers,
            // the all-reduce library's buffers) is the same on every GPU.
            _ => {
                let weights: u64 = mem.iter().filter(|m| m.device.starts_with("Meta")).map(|m| m.model).sum();
                let total_weights = weights as f64 * (3.0 + (n - 1) as f64) / 3.0;
                let want = total_weights * 2.0 / (3.0 + (n - 1) as f64);
                let mean_other = share[1..].iter().sum::<f64>() / (n - 1) as f64;
                let got = share[0] - mean_other;
                eprintln!("first GPU holds {got} B more than the others, expected {want} B");
                assert!((got - want).abs() <= 0.25 * want, "{mode} {split:?}: {got} B more, expected {want} B");
            }
        }
    } else if n >= 2 && !split.is_empty() {
        match mode {
            // Equal shares of whole layers (the output layer counts as one
            // more): each GPU within 1.5 layers of n_layer / n.
            SplitMode::Layer => {
                let per_layer = share.iter().sum::<f64>() / m.n_layer() as f64;
                let even = m.n_layer() as f64 / n as f64;
                for s in &share {
                    assert!((s / per_layer - even).abs() <= 1.5, "{mode} {split:?}: about equal layers: {share:?}");
                }
            }
            _ => {
                let (min, max) = share.iter().fold((f64::MAX, 0.0f64), |(a, b), &s| (a.min(s), b.max(s)));
                assert!(max - min <= 0.05 * max, "{mode} {split:?}: equal shares: {share:?}");
            }
        }
    }
    let logits = last_logits(&m, FlashAttention::Auto);
    let d = max_diff(&logits, reference);
    eprintln!("max |logit diff| vs one GPU: {d}");
    assert!(d < TOLERANCE, "{mode} {split:?}: logits differ from one GPU by {d}");
    assert_eq!(greedy(&m), greedy(&m), "greedy generation is deterministic");
    kv_ops_work(&m);
}

fn one_gpu_reference() -> Vec<f32> {
    let g = gpus();
    let m = Model::load_with(small_path(), ModelParams::default().split_mode(SplitMode::None).devices(&indices(&g)))
        .unwrap();
    last_logits(&m, FlashAttention::Auto)
}

fn splits(n: usize) -> Vec<Vec<f32>> {
    let mut v = vec![Vec::new(), vec![1.0; n]];
    if n >= 2 {
        let mut skew = vec![1.0; n];
        skew[0] = 3.0;
        v.push(skew);
    }
    v
}

#[test]
#[ignore = "needs a GPU"]
fn split_none_on_each_gpu_matches_cpu() {
    let g = gpus();
    let path = common::tiny_path(VocabKind::Spm);
    let cpu = Model::load_with(&path, ModelParams::default().devices(&[])).unwrap();
    assert!(cpu.devices().is_empty());
    let cpu_logits = last_logits(&cpu, FlashAttention::Auto);
    for (i, dev) in g.iter().enumerate() {
        let p = ModelParams::default().split_mode(SplitMode::None).devices(&indices(&g)).main_gpu(i);
        let m = Model::load_with(&path, p).unwrap();
        assert_eq!(m.devices(), std::slice::from_ref(dev));
        let mem = weights_per_device(&m);
        assert!(bytes_on(&mem, dev) > 0, "{} holds weights: {mem:?}", dev.name);
        for other in g.iter().filter(|o| o.index != dev.index) {
            assert_eq!(bytes_on(&mem, other), 0, "{} holds nothing", other.name);
        }
        let d = max_diff(&last_logits(&m, FlashAttention::Auto), &cpu_logits);
        eprintln!("{}: max |logit diff| vs CPU: {d}", dev.name);
        assert!(d < TOLERANCE, "{}: logits differ from the CPU by {d}", dev.name);
        assert_eq!(greedy(&m), greedy(&m));
        kv_ops_work(&m);
    }
}

#[test]
#[ignore = "needs a GPU"]
fn split_layer_on_all_gpus() {
    let reference = one_gpu_reference();
    for split in splits(gpus().len()) {
        check_split(SplitMode::Layer, &split, &reference);
    }
}

#[test]
#[ignore = "needs a GPU"]
fn split_tensor_on_all_gpus() {
    let reference = one_gpu_reference();
    for split in splits(gpus().len()) {
        check_split(SplitMode::Tensor, &split, &reference);
    }
}

#[test]
#[ignore = "needs a GPU"]
fn invalid_multi_gpu_settings_are_refused() {
    let g = gpus();
    let path = small_path();
    let base = || ModelParams::default().devices(&indices(&g));
    // Row split: CUDA/HIP have no split buffers in this llama.cpp.
    match Model::load_with(&path, base().split_mode(SplitMode::Row)) {
        Err(Error::SplitMode { mode: "row", reason }) => assert!(reason.contains("split buffers"), "{reason}"),
        Ok(_) => panic!("row split loaded: the backend now has split buffers; update the validation and the docs"),
        Err(e) => panic!("unexpected error {e}"),
    }
    // Tensor split longer than the device list.
    let long = vec![1.0; g.len() + 1];
    assert!(matches!(Model::load_with(&path, base().tensor_split(&long)), Err(Error::InvalidParam { .. })));
    // Main GPU out of range in split mode none.
    let p = base().split_mode(SplitMode::None).main_gpu(g.len());
    assert!(matches!(Model::load_with(&path, p), Err(Error::InvalidParam { name: "main GPU", .. })));
    // Tensor mode with flash attention off: refused at context creation.
    let m = Model::load_with(&path, base().split_mode(SplitMode::Tensor)).unwrap();
    let e = m.new_context(ContextParams::default().flash_attention(FlashAttention::Off)).unwrap_err();
    assert!(matches!(e, Error::SplitMode { mode: "tensor", .. }), "{e}");
}

/// The plan against what the devices report in use after loading and
/// creating a context: within 5% per device in every split mode (none with
/// the last GPU as main GPU, layer, tensor); a GPU the plan leaves out holds
/// (almost) nothing. In
/// tensor mode on several GPUs that includes the all-reduce's own buffers,
/// which llama.cpp does not account: the plan's estimate for the path that
/// `all_reduce_for` predicts is checked with the rest, and the part that
/// llama.cpp does account is checked on its own too.
#[test]
#[ignore = "needs a GPU"]
fn memory_plan_matches_what_loading_allocates() {
    let g = gpus();
    let mut worst: f64 = 0.0;
    for mode in [SplitMode::None, SplitMode::Layer, SplitMode::Tensor] {
        let params = || ModelParams::default().split_mode(mode).devices(&indices(&g)).main_gpu(g.len() - 1);
        let ctx_params = ContextParams::default().n_ctx(2048);
        let plan = llama_rs::plan_memory(small_path(), params(), ctx_params.clone()).unwrap();
        let before = free_memory();
        let m = Model::load_with(small_path(), params()).unwrap();
        let c = m.new_context(ctx_params).unwrap();
        let used = used_since(&before, &g);
        let real = llama_rs::per_device(&c.memory_breakdown().unwrap());
        eprintln!("{mode}: plan {plan:?}\n{mode}: breakdown {real:?}\n{mode}: reported in use {used:?}");
        if mode == SplitMode::Tensor {
            eprintln!("{mode}: all-reduce path predicted: {:?}", llama_rs::all_reduce_for(&g));
        }
        let meta: u64 = real.iter().filter(|d| d.device.starts_with("Meta")).map(DeviceMemory::total).sum();
        for (dev, &u) in g.iter().zip(&used) {
            let planned: Vec<&DeviceMemory> = plan.iter().filter(|d| d.device == dev.name).collect();
            let p: u64 = planned.iter().map(|d| d.total()).sum();
            let reserve: u64 = planned.iter().map(|d| d.all_reduce).sum();
            if p == 0 {
                // Not used in this mode (split mode none, not the main GPU).
                eprintln!("{mode}: {} planned nothing, the device reports {u} B in use", dev.name);
                assert!(u.abs() <= UNUSED_SLACK, "{mode}: {} is not used but {u} B were allocated on it", dev.name);
                continue;
            }
            let err = (p as f64 - u as f64).abs() / u as f64;
            eprintln!(
                "{mode}: {} planned {p} B ({reserve} B of it all-reduce), the device reports {u} B in use ({:.2}%)",
                dev.name,
                err * 100.0
            );
            worst = worst.max(err);
            if mode == SplitMode::Tensor && g.len() > 1 {
                // Equal split: every device holds what the meta device accounts.
                let own: u64 = real.iter().filter(|d| d.device == dev.name).map(DeviceMemory::total).sum();
                let accounted = meta + own;
                let e = ((p - reserve) as f64 - accounted as f64).abs() / accounted as f64;
                eprintln!(
                    "{mode}: {} planned {} B without the all-reduce, llama.cpp accounts {accounted} B ({:.2}%); \
                     not accounted: {} B",
                    dev.name,
                    p - reserve,
                    e * 100.0,
                    u - accounted as i64
                );
                worst = worst.max(e);
            }
        }
    }
    eprintln!("worst plan error: {:.2}%", worst * 100.0);
    assert!(worst <= 0.05, "a device's plan is off by {:.2}% (> 5%)", worst * 100.0);
}

/// A context whose KV cache is twice what the GPUs have free is
/// `Error::ContextCreate` with llama.cpp's reason and what was asked; the
/// model then still makes a context that fits.
#[test]
#[ignore = "needs a GPU"]
fn a_context_larger_than_the_gpus_is_an_error() {
    let g = gpus();
    let params = || ModelParams::default().devices(&indices(&g));
    let probe = 4096u64;
    let plan = llama_rs::plan_memory(small_path(), params(), ContextParams::default().n_ctx(probe as u32)).unwrap();
    let kv: u64 = plan.iter().filter(|d| g.iter().any(|x| x.name == d.device)).map(|d| d.context).sum();
    let free: u64 = g.iter().map(|d| d.memory_free).sum();
    let n_ctx = u32::try_from((2 * free / (kv / probe)).next_multiple_of(256)).expect("n_ctx fits u32");
    eprintln!("KV {} B per token, {free} B free on the GPUs: asking for {n_ctx} tokens", kv / probe);
    let m = Model::load_with(small_path(), params()).unwrap();
    match m.new_context(ContextParams::default().n_ctx(n_ctx)) {
        Err(Error::ContextCreate { message }) => {
            eprintln!("{message}");
            assert!(message.contains("alloc"), "llama.cpp's reason is kept: {message}");
            assert!(message.contains(&format!("asked for {n_ctx} tokens")), "{message}");
            assert!(message.contains("plan_memory"), "{message}");
        }
        Err(e) => panic!("another error: {e}"),
        Ok(c) => panic!("a context of {} tokens was created on {free} B free", c.n_ctx()),
    }
    assert!(m.new_context(ContextParams::default().n_ctx(512)).is_ok());
}

/// `fit` keeps every GPU within the free memory it is given: it shortens the
/// context first, then takes layers off the GPUs, and says when nothing fits.
#[test]
#[ignore = "needs a GPU"]
fn fit_chooses_what_fits() {
    let g = gpus();
    for mode in [SplitMode::Layer, SplitMode::Tensor] {
        let params = || ModelParams::default().split_mode(mode).devices(&indices(&g));
        let ctx = ContextParams::default().n_ctx(2048);
        let full = llama_rs::plan_memory(small_path(), params(), ctx.clone()).unwrap();
        let on = |plan: &[DeviceMemory], d: &Device| -> u64 {
            plan.iter().filter(|p| p.device == d.name).map(DeviceMemory::total).sum()
        };
        let fit_with = |free: Vec<u64>| {
            let f = llama_rs::FitParams { margin: 0, min_ctx: 512, free: Some(free.clone()) };
            let r = llama_rs::fit(small_path(), params(), ctx.clone(), f);
            if let Ok(fit) = &r {
                for (d, &f) in g.iter().zip(&free) {
                    assert!(on(&fit.plan, d) <= f, "{mode}: {} planned {} B > {f} B free", d.name, on(&fit.plan, d));
                }
            }
            r
        };
        // Everything fits: unchanged.
        let roomy: Vec<u64> = g.iter().map(|d| on(&full, d) + (64 << 20)).collect();
        let f = fit_with(roomy).unwrap();
        assert_eq!((f.n_gpu_layers, f.n_ctx), (None, 2048), "{mode}");
        // A little short: a shorter context, all layers.
        let short: Vec<u64> = g.iter().map(|d| on(&full, d) - 1).collect();
        let f = fit_with(short).unwrap();
        assert!(f.n_gpu_layers.is_none() && f.n_ctx < 2048, "{mode}: {f:?}");
        // Room for only 4 of the 9 layers (8 + output) at the shortest context:
        // fewer layers on the GPUs.
        let half_plan =
            llama_rs::plan_memory(small_path(), params().n_gpu_layers(Some(4)), ctx.clone().n_ctx(512)).unwrap();
        let half: Vec<u64> = g.iter().map(|d| on(&half_plan, d)).collect();
        let f = fit_with(half).unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert!(f.n_gpu_layers.is_some_and(|n| (4..9).contains(&n)) && f.n_ctx == 512, "{mode}: {f:?}");
        // No free memory: an error, or nothing at all on the GPUs.
        match fit_with(vec![0; g.len()]) {
            Err(_) => {}
            Ok(f) => assert!(g.iter().all(|d| on(&f.plan, d) == 0), "{mode}: {f:?}"),
        }
        eprintln!("{mode}: fit ok");
    }
}

/// The serving engine on the GPUs (unified KV cache, `seq_cp`, sequence
/// state from device memory, the abort callback): 8 requests at once give
/// each one's solo tokens (up to a near tie: the GPU kernels' rounding
/// changes with the batch size, `TOLERANCE`), a saved state resumes as
/// decoding in place, a cancelled request frees its slot.
#[test]
#[ignore = "needs a GPU"]
fn engine_on_the_gpus() {
    use llama_rs::{Engine, EngineParams, Error, Event, Request, SamplingParams};
    use std::sync::Arc;
    let g = gpus();
    let m = Arc::new(Model::load_with(small_path(), ModelParams::default().devices(&indices(&g))).unwrap());
    let base = prompt(&m);
    let prompts: Vec<Vec<Token>> =
        (0..8).map(|i| base.iter().copied().chain([Token(100 + 37 * i)]).collect()).collect();
    let engine = |slots: u32| {
        let ctx = ContextParams::default().n_ctx(4096).n_batch(512);
        Engine::new(m.clone(), EngineParams::default().n_slots(slots).context(ctx)).unwrap()
    };
    let mk = |i: usize| {
        Request::tokens(prompts[i].clone())
            .sampling(SamplingParams::greedy())
            .max_tokens(16)
            .ignore_eos(true)
            .logprobs(2)
    };
    let alone: Vec<_> = (0..8).map(|i| engine(1).submit(mk(i)).unwrap().wait().unwrap()).collect();
    let e = engine(8);
    // 8 requests at once against each alone: the same tokens up to a near tie.
    let compare = |alone: &[llama_rs::Completion], e: &Engine, what: &str| {
        let together: Vec<_> = e.submit_all((0..8).map(mk)).unwrap().into_iter().map(|h| h.wait().unwrap()).collect();
        let mut compared = 0;
        for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
            assert!((a.logprobs[0].logprob - t.logprobs[0].logprob).abs() < TOLERANCE, "{what}: request {i}");
            for (k, lp) in a.logprobs.iter().enumerate() {
                if lp.top[0].1 - lp.top[1].1 < 2.0 * TOLERANCE {
                    break;
                }
                assert_eq!(a.tokens[k], t.tokens[k], "{what}: request {i}, token {k}");
                compared += 1;
            }
        }
        println!("engine, {what}: {compared} tokens equal before a near tie");
        assert!(compared >= 8, "{what}: {compared}");
    };
    compare(&alone, &e, &format!("8 at once on {} GPU(s), default split, vs 1 slot", g.len()));
    // With several GPUs: layer and tensor split, 8 requests at once, against
    // the single-GPU run of each request.
    if g.len() > 1 {
        let one_gpu = Arc::new(Model::load_with(small_path(), ModelParams::default().devices(&[g[0].index])).unwrap());
        let single = Engine::new(
            one_gpu,
            EngineParams::default().n_slots(1).context(ContextParams::default().n_ctx(4096).n_batch(512)),
        )
        .unwrap();
        let reference: Vec<_> = (0..8).map(|i| single.submit(mk(i)).unwrap().wait().unwrap()).collect();
        for mode in [SplitMode::Layer, SplitMode::Tensor] {
            let split = Arc::new(
                Model::load_with(small_path(), ModelParams::default().devices(&indices(&g)).split_mode(mode)).unwrap(),
            );
            let ctx = ContextParams::default().n_ctx(4096).n_batch(512);
            let e = Engine::new(split, EngineParams::default().n_slots(8).context(ctx)).unwrap();
            compare(&reference, &e, &format!("8 at once, {mode:?} split on {} GPUs, vs 1 GPU", g.len()));
        }
    }

    // Prefix reuse from the idle slots of the run above.
    let again = e.submit(mk(3)).unwrap().wait().unwrap();
    assert!(again.finished.stats.cached_tokens >= base.len());
    assert!((again.logprobs[0].logprob - alone[3].logprobs[0].logprob).abs() < TOLERANCE);

    // Saved state from device memory, resumed on a fresh engine.
    let first = e.submit(mk(5).max_tokens(6).save_state(true)).unwrap().wait().unwrap();
    let state = first.finished.state.unwrap();
    let more = [Token(200), Token(201)];
    let resumed = engine(2)
        .submit(
            Request::tokens(more.to_vec())
                .sampling(SamplingParams::greedy())
                .max_tokens(8)
                .logprobs(1)
                .resume(state.clone()),
        )
        .unwrap()
        .wait()
        .unwrap();
    let whole: Vec<Token> = state.tokens().iter().copied().chain(more).collect();
    // The engine must outlive its requests (dropping it ends them).
    let e2 = engine(2);
    let in_place = e2.submit(Request::tokens(whole).sampling(SamplingParams::greedy()).max_tokens(8).logprobs(1));
    let in_place = in_place.unwrap().wait().unwrap();
    assert!((resumed.logprobs[0].logprob - in_place.logprobs[0].logprob).abs() < TOLERANCE);

    // Cancellation frees the one slot.
    let one = engine(1);
    let long = one.submit(mk(0).max_tokens(3000)).unwrap();
    assert!(matches!(long.recv(), Some(Event::Piece(_))));
    let next = one.submit(mk(1).max_tokens(2)).unwrap();
    long.cancel();
    assert!(matches!(long.wait(), Err(Error::Aborted)));
    assert!(next.wait().is_ok());
}

/// Embeddings (mean pooling), rank-pooling scores, a LoRA adapter, a control
/// vector and JSON-schema output on the GPUs: the same results as on the
/// CPU within `TOLERANCE` (schema output: valid), scale 0 and clearing give
/// the base logits exactly.
#[test]
#[ignore = "needs a GPU"]
fn embeddings_adapters_and_structured_output_on_the_gpus() {
    use llama_rs::synthetic::{Architecture, SyntheticLora};
    use llama_rs::{EmbedParams, Embedder, LoraAdapter, Pooling, StopReason};
    let g = gpus();
    let on_gpus = ModelParams::default().devices(&indices(&g));
    let on_cpu = ModelParams::default().n_gpu_layers(Some(0));
    let gpu = Model::load_with(small_path(), on_gpus.clone()).unwrap();
    let cpu = Model::load_with(small_path(), on_cpu.clone()).unwrap();

    // Embeddings.
    let texts = ["the quick brown fox", "jumps over the lazy dog", "and runs away"];
    let embed =
        |m: &Model| Embedder::new(m, EmbedParams::default().pooling(Pooling::Mean)).unwrap().embed(&texts).unwrap();
    let (e_gpu, e_cpu) = (embed(&gpu), embed(&cpu));
    let diff = e_gpu.iter().zip(&e_cpu).map(|(a, b)| max_diff(a, b)).fold(0.0, f32::max);
    println!("embeddings GPU vs CPU: max diff {diff:.2e}");
    assert!(diff < TOLERANCE, "{diff}");

    // Rank pooling (a synthetic Qwen3 reranker with a classifier head).
    let ranker = SyntheticModel::new(ModelShape::tiny())
        .architecture(Architecture::Qwen3)
        .classifier(&["yes", "no"])
        .weight_type(WeightType::F32)
        .seed(7)
        .write_cached(fixture_dir())
        .unwrap();
    let scores = |params: ModelParams| {
        let m = Model::load_with(&ranker, params).unwrap();
        let mut r = Embedder::new(&m, EmbedParams::default()).unwrap();
        r.rerank("a question", &["first document", "second one", "third"]).unwrap()
    };
    let (s_gpu, s_cpu) = (scores(on_gpus.clone()), scores(on_cpu.clone()));
    println!("rerank GPU {s_gpu:?} vs CPU {s_cpu:?}");
    assert!(max_diff(&s_gpu, &s_cpu) < TOLERANCE);

    // A LoRA adapter on every layer's attention and the output.
    let lora_path = fixture_dir().join("gpu-small-lora.gguf");
    let small = SyntheticModel::new(ModelShape::small()).vocab(VocabKind::Spm).weight_type(WeightType::F16).seed(7);
    SyntheticLora::new(&small)
        .target("blk.0.attn_q.weight", 4)
        .target("output.weight", 4)
        .alpha(64.0)
        .write(&lora_path)
        .unwrap();
    let with_lora = |m: &Model, scale: f32| {
        let a = LoraAdapter::load(m, &lora_path).unwrap();
        let tokens = prompt(m);
        let mut c = m.new_context(ContextParams::default().n_ctx(512)).unwrap();
        c.set_lora(&[(&a, scale)]).unwrap();
        let mut b = Batch::new(tokens.len(), 1).unwrap();
        b.add_sequence(&tokens, 0, 0, true).unwrap();
        c.decode(&mut b).unwrap();
        c.logits(tokens.len() as i32 - 1).unwrap().to_vec()
    };
    let base = last_logits(&gpu, FlashAttention::Auto);
    assert_eq!(with_lora(&gpu, 0.0), base, "scale 0 gives the base logits");
    let (l_gpu, l_cpu) = (with_lora(&gpu, 1.0), with_lora(&cpu, 1.0));
    println!("LoRA: changes the logits by {:.3}, GPU vs CPU {:.2e}", max_diff(&l_gpu, &base), max_diff(&l_gpu, &l_cpu));
    assert!(max_diff(&l_gpu, &base) > 10.0 * TOLERANCE, "the adapter must matter");
    assert!(max_diff(&l_gpu, &l_cpu) < TOLERANCE);

    // A control vector on layers 2..=5, then cleared.
    let n = gpu.n_embd() as usize * (gpu.n_layer() as usize - 1);
    let tokens = prompt(&gpu);
    let mut c = gpu.new_context(ContextParams::default().n_ctx(512)).unwrap();
    let run = |c: &mut llama_rs::Context<'_>| {
        c.clear_kv(false);
        let mut b = Batch::new(tokens.len(), 1).unwrap();
        b.add_sequence(&tokens, 0, 0, true).unwrap();
        c.decode(&mut b).unwrap();
        c.logits(tokens.len() as i32 - 1).unwrap().to_vec()
    };
    let plain = run(&mut c);
    c.set_control_vector(&vec![0.05f32; n], 2..=5).unwrap();
    let steered = run(&mut c);
    c.clear_control_vector();
    assert!(max_diff(&steered, &plain) > TOLERANCE);
    assert_eq!(run(&mut c), plain, "clearing restores the logits");

    // JSON-schema output (bounded by the schema, so a random model ends it).
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"colour": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}},
        "required": ["colour", "ok"],
        "additionalProperties": false
    });
    for seed in 0..3 {
        let mut s = Sampler::builder(&gpu).json_schema(schema.clone()).temp(1.0).dist(seed).build().unwrap();
        let mut c = gpu.new_context(ContextParams::default().n_ctx(512)).unwrap();
        let (text, stats) =
            c.generate_text(&mut s, "once upon a time", GenerateParams::default().max_tokens(64)).unwrap();
        assert_eq!(stats.stop_reason, StopReason::Eog, "{text:?}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        assert!(["red", "green", "blue"].contains(&v["colour"].as_str().unwrap()) && v["ok"].is_boolean(), "{v}");
    }
}
