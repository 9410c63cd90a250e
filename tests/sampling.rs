//! Samplers: determinism, greedy = argmax, chain validation, grammars, and
//! every sampling-time abort of llama.cpp returning an error instead.

mod common;

use common::{tiny, tiny_bpe};
use llama_rs::{AddSpecial, ParseSpecial, RenderSpecial};
use llama_rs::{Batch, Context, ContextParams, Error, Model, Sampler, Token, RANDOM_SEED};

fn ctx(model: &'static Model) -> Context<'static> {
    model.new_context(ContextParams::default().n_ctx(256).n_batch(64).threads(2)).unwrap()
}

/// Decodes a short prompt with logits on the last row; returns that row.
fn decode_prompt(c: &mut Context) -> i32 {
    let tokens = c.vocab().tokenize("the quick brown fox", AddSpecial::Yes, ParseSpecial::No).unwrap();
    let mut b = Batch::new(tokens.len(), 1).unwrap();
    b.add_sequence(&tokens, 0, 0, true).unwrap();
    c.decode(&mut b).unwrap();
    tokens.len() as i32 - 1
}

/// Samples `n` tokens, decoding each one.
fn run(model: &'static Model, sampler: &mut Sampler, n: usize) -> Vec<Token> {
    let mut c = ctx(model);
    let mut row = decode_prompt(&mut c);
    let start = row + 1;
    let mut out = Vec::new();
    for pos in start..start + n as i32 {
        let t = sampler.sample(&c, row).unwrap();
        out.push(t);
        let mut b = Batch::new(1, 1).unwrap();
        b.add(t, pos, &[0], true).unwrap();
        c.decode(&mut b).unwrap();
        row = 0;
    }
    out
}

/// The token whose piece is exactly `text`.
fn token_for(model: &Model, text: &str) -> Token {
    let v = model.vocab();
    (0..v.n_tokens())
        .map(Token)
        .find(|&t| v.token_to_piece(t, RenderSpecial::No).unwrap() == text.as_bytes())
        .unwrap_or_else(|| panic!("no token for {text:?}"))
}

#[test]
fn same_seed_gives_same_tokens() {
    let a = run(tiny(), &mut Sampler::builder(tiny()).dist(7).build().unwrap(), 32);
    let b = run(tiny(), &mut Sampler::builder(tiny()).dist(7).build().unwrap(), 32);
    assert_eq!(a, b);
}

#[test]
fn different_seeds_differ() {
    let a = run(tiny(), &mut Sampler::builder(tiny()).dist(1).build().unwrap(), 32);
    let b = run(tiny(), &mut Sampler::builder(tiny()).dist(2).build().unwrap(), 32);
    assert_ne!(a, b);
}

#[test]
fn reset_replays_the_same_tokens() {
    let mut s = Sampler::builder(tiny()).temp(1.5).dist(11).build().unwrap();
    let a = run(tiny(), &mut s, 16);
    s.reset().unwrap();
    let b = run(tiny(), &mut s, 16);
    assert_eq!(a, b);
}

#[test]
fn greedy_equals_argmax() {
    let mut c = ctx(tiny());
    let row = decode_prompt(&mut c);
    let logits = c.logits(row).unwrap();
    let argmax = logits.iter().enumerate().fold(0, |best, (i, &l)| if l > logits[best] { i } else { best });
    let mut s = Sampler::greedy(tiny()).unwrap();
    assert_eq!(s.sample(&c, row).unwrap(), Token(argmax as i32));
}

#[test]
fn chain_without_selecting_sampler_is_error() {
    let m = tiny();
    let is_sampler_err = |r: llama_rs::Result<Sampler>| matches!(r, Err(Error::Sampler { .. }));
    assert!(is_sampler_err(Sampler::builder(m).build()));
    assert!(is_sampler_err(Sampler::builder(m).top_k(10).temp(0.8).build()));
    // A selecting sampler that is not last.
    assert!(is_sampler_err(Sampler::builder(m).dist(1).top_k(10).build()));
    assert!(is_sampler_err(Sampler::builder(m).greedy().dist(1).build()));
}

#[test]
fn sample_before_decode_is_error() {
    let c = ctx(tiny());
    let mut s = Sampler::greedy(tiny()).unwrap();
    assert!(matches!(s.sample(&c, 0), Err(Error::NoLogits { .. })));
    assert!(matches!(s.sample(&c, -1), Err(Error::NoLogits { .. })));
}

#[test]
fn sample_on_non_output_row_is_error() {
    let mut c = ctx(tiny());
    let row = decode_prompt(&mut c);
    let mut s = Sampler::builder(tiny()).dist(3).build().unwrap();
    assert!(matches!(s.sample(&c, 0), Err(Error::NoLogits { .. })), "row 0 has no logits");
    assert!(matches!(s.sample(&c, row + 1), Err(Error::NoLogits { .. })));
    assert!(matches!(s.sample(&c, 1000), Err(Error::NoLogits { .. })));
    assert!(matches!(s.sample(&c, -5), Err(Error::NoLogits { .. })));
    // The process survived and the valid row still samples.
    assert!(s.sample(&c, row).is_ok());
    assert_eq!(s.perf().n_sample, 1, "failed calls accept nothing");
}

#[test]
fn sample_on_embeddings_context_does_not_abort() {
    let m = tiny();
    let mut c = m.new_context(ContextParams::default().n_ctx(256).n_batch(64).threads(2).embeddings(true)).unwrap();
    let row = decode_prompt(&mut c);
    let mut s = Sampler::greedy(m).unwrap();
    // llama.cpp computes no logits for a pooled embeddings context (it would
    // abort in llama_sampler_sample); with pooling none it does.
    match s.sample(&c, row) {
        Ok(t) => assert!(t.0 >= 0 && t.0 < m.vocab().n_tokens()),
        Err(e) => assert!(matches!(e, Error::NoLogits { .. }), "{e}"),
    }
}

#[test]
fn logit_bias_with_out_of_range_token_is_error() {
    let m = tiny();
    let n = m.vocab().n_tokens();
    for bad in [Token(n), Token(-1), Token(i32::MAX)] {
        let r = Sampler::builder(m).logit_bias(&[(Token(5), 1.0), (bad, -1.0)]).greedy().build();
        assert!(matches!(r, Err(Error::InvalidToken { token, .. }) if token == bad.0), "{bad}");
    }
    let r = Sampler::builder(m).logit_bias(&[(Token(5), f32::NAN)]).greedy().build();
    assert!(matches!(r, Err(Error::InvalidParam { .. })));
}

#[test]
fn logit_bias_forces_a_token() {
    let target = Token(100);
    let mut s = Sampler::builder(tiny()).logit_bias(&[(target, 1000.0)]).dist(5).build().unwrap();
    assert!(run(tiny(), &mut s, 4).iter().all(|&t| t == target));
}

#[test]
fn bad_parameters_are_errors() {
    let m = tiny();
    let builders = [
        Sampler::builder(m).temp(f32::NAN).dist(1),
        Sampler::builder(m).temp(f32::INFINITY).dist(1),
        Sampler::builder(m).top_p(1.5, 1).dist(1),
        Sampler::builder(m).top_p(-0.1, 1).dist(1),
        Sampler::builder(m).min_p(f32::NAN, 1).dist(1),
        Sampler::builder(m).typical(2.0, 1).dist(1),
        Sampler::builder(m).temp_ext(0.8, -1.0, 1.0).dist(1),
        Sampler::builder(m).xtc(0.5, f32::NAN, 1, 1).dist(1),
        Sampler::builder(m).top_n_sigma(f32::NAN).dist(1),
        Sampler::builder(m).penalties(64, 0.0, 0.0, 0.0).dist(1),
        Sampler::builder(m).penalties(-1, 1.1, 0.0, 0.0).dist(1),
        Sampler::builder(m).penalties(i32::MAX, 1.1, 0.0, 0.0).dist(1),
        Sampler::builder(m).penalties(64, 1.1, f32::NAN, 0.0).dist(1),
        Sampler::builder(m).dry(0.8, 0.5, 2, 64, &[]).dist(1),
        Sampler::builder(m).dry(0.8, 1.75, -1, 64, &[]).dist(1),
        Sampler::builder(m).dry(0.8, 1.75, 2, i32::MAX, &[]).dist(1),
        Sampler::builder(m).mirostat(1, 5.0, 0.1, 0),
        Sampler::builder(m).mirostat(1, f32::NAN, 0.1, 100),
        Sampler::builder(m).mirostat_v2(1, 5.0, -0.1),
        Sampler::builder(m).adaptive_p(0.5, 1.5, 1),
        Sampler::builder(m).adaptive_p(f32::NAN, 0.9, 1),
    ];
    for b in builders {
        let dbg = format!("{b:?}");
        assert!(matches!(b.build(), Err(Error::InvalidParam { .. })), "{dbg}");
    }
    let r = Sampler::builder(m).dry(0.8, 1.75, 2, 64, &["a\0b"]).dist(1).build();
    assert!(matches!(r, Err(Error::Nul { .. })));
}

#[test]
fn every_sampler_builds_and_samples() {
    let m = tiny();
    let chains = [
        Sampler::builder(m)
            .penalties(64, 1.1, 0.1, 0.1)
            .dry(0.8, 1.75, 2, 64, &["\n", ":", "\"", "*"])
            .top_k(40)
            .typical(0.95, 1)
            .top_p(0.95, 1)
            .min_p(0.05, 1)
            .xtc(0.5, 0.1, 1, 3)
            .top_n_sigma(2.0)
            .temp_ext(0.8, 0.5, 1.0)
            .temp(0.9)
            .dist(3),
        Sampler::builder(m).temp(0.8).mirostat(3, 5.0, 0.1, 100),
        Sampler::builder(m).temp(0.8).mirostat_v2(3, 5.0, 0.1),
        Sampler::builder(m).min_p(0.05, 1).adaptive_p(0.5, 0.9, 3),
        Sampler::builder(m).top_k(1).greedy(),
        Sampler::builder(m).temp(0.0).dist(3),
    ];
    for b in chains {
        let dbg = format!("{b:?}");
        let mut s = b.build().unwrap_or_else(|e| panic!("{dbg}: {e}"));
        let tokens = run(m, &mut s, 12);
        assert_eq!(tokens.len(), 12, "{dbg}");
        assert_eq!(s.perf().n_sample, 12, "{dbg}");
    }
}

#[test]
fn seed_is_reported() {
    let m = tiny();
    assert_eq!(Sampler::builder(m).dist(1234).build().unwrap().seed(), Some(1234));
    let random = Sampler::builder(m).dist(RANDOM_SEED).build().unwrap().seed();
    assert!(random.is_some_and(|s| s != RANDOM_SEED));
    assert_eq!(Sampler::greedy(m).unwrap().seed(), None);
}

#[test]
fn perf_counts_and_resets() {
    let mut s = Sampler::builder(tiny()).dist(9).build().unwrap();
    run(tiny(), &mut s, 3);
    assert_eq!(s.perf().n_sample, 3);
    s.accept(Token(10)).unwrap();
    assert_eq!(s.perf().n_sample, 4);
    s.reset_perf();
    assert_eq!(s.perf().n_sample, 0);
}

#[test]
fn accept_checks_token_ids() {
    let mut s = Sampler::builder(tiny()).penalties(64, 1.1, 0.0, 0.0).dist(1).build().unwrap();
    let n = tiny().vocab().n_tokens();
    assert!(matches!(s.accept(Token(n)), Err(Error::InvalidToken { .. })));
    assert!(matches!(s.accept(Token(-1)), Err(Error::InvalidToken { .. })));
    s.accept(Token(n - 1)).unwrap();
}

#[test]
fn invalid_gbnf_is_error() {
    let m = tiny();
    for (grammar, root, needle) in [
        ("root ::= (", "root", "parse"),
        ("root ::= \"a\" | ", "root", ""),
        ("foo ::= \"a\"", "root", "root"),
        ("root ::= undefined-rule", "root", ""),
        ("root ::= root \"a\"", "root", "recursion"),
    ] {
        match Sampler::builder(m).grammar(grammar, root).greedy().build() {
            Err(Error::Sampler { message }) => assert!(message.contains(needle), "{grammar}: {message}"),
            Err(e) => panic!("{grammar}: unexpected error {e}"),
            Ok(_) if grammar.ends_with("| ") => {} // an empty alternative is valid GBNF
            Ok(_) => panic!("{grammar}: accepted"),
        }
    }
    let r = Sampler::builder(m).grammar("root ::= \"a\"\0", "root").greedy().build();
    assert!(matches!(r, Err(Error::Nul { .. })));
}

#[test]
fn bad_lazy_trigger_regex_is_error() {
    let r = Sampler::builder(tiny()).grammar_lazy("root ::= \"yes\"", "root", &["(unclosed"], &[]).greedy().build();
    assert!(matches!(r, Err(Error::Exception { .. })), "{r:?}");
    let n = tiny().vocab().n_tokens();
    let r = Sampler::builder(tiny()).grammar_lazy("root ::= \"yes\"", "root", &[], &[Token(n)]).greedy().build();
    assert!(matches!(r, Err(Error::InvalidToken { .. })));
}

#[test]
fn accept_forbidden_token_is_error() {
    let m = tiny();
    let mut s = Sampler::builder(m).grammar("root ::= \"yes\"", "root").dist(1).build().unwrap();
    let err = s.accept(token_for(m, "n")).unwrap_err();
    assert!(matches!(err, Error::GrammarRejected { .. }), "{err}");
    // The sampler is unchanged and still usable.
    for piece in ["y", "e", "s"] {
        s.accept(token_for(m, piece)).unwrap();
    }
}

#[test]
fn accept_eog_before_grammar_completion_is_error() {
    let m = tiny();
    let eos = m.vocab().eos().unwrap();
    let mut s = Sampler::builder(m).grammar("root ::= \"yes\"", "root").dist(1).build().unwrap();
    // llama.cpp aborts the process here (llama-grammar.cpp, GGML_ABORT).
    let err = s.accept(eos).unwrap_err();
    assert!(err.to_string().contains("not complete"), "{err}");
    s.accept(token_for(m, "y")).unwrap();
    assert!(s.accept(eos).is_err());
    s.accept(token_for(m, "e")).unwrap();
    s.accept(token_for(m, "s")).unwrap();
    s.accept(eos).unwrap();
    // reset() starts the grammar over.
    s.reset().unwrap();
    assert!(s.accept(eos).is_err());
}

#[test]
fn sampled_eog_before_grammar_completion_is_error() {
    // top_k(1) after a huge EOS bias leaves only EOS; the grammar rejects it
    // but greedy still selects it. llama_sampler_sample would then accept it
    // and abort; sample() returns an error and accepts nothing.
    let m = tiny();
    let eos = m.vocab().eos().unwrap();
    let mut s = Sampler::builder(m)
        .logit_bias(&[(eos, 1000.0)])
        .top_k(1)
        .grammar("root ::= \"yes\"", "root")
        .greedy()
        .build()
        .unwrap();
    let mut c = ctx(m);
    let row = decode_prompt(&mut c);
    let err = s.sample(&c, row).unwrap_err();
    assert!(matches!(err, Error::GrammarRejected { .. }), "{err}");
    assert_eq!(s.perf().n_sample, 0);
}

#[test]
fn grammar_dead_end_is_error() {
    // Every candidate the grammar allows is banned first.
    let m = tiny();
    let v = m.vocab();
    let banned: Vec<(Token, f32)> = (0..v.n_tokens())
        .map(Token)
        .filter(|&t| v.token_to_piece(t, RenderSpecial::No).unwrap().first() == Some(&b'z'))
        .map(|t| (t, f32::NEG_INFINITY))
        .collect();
    let mut s =
        Sampler::builder(m).logit_bias(&banned).top_k(1).grammar("root ::= \"z\"", "root").dist(1).build().unwrap();
    let mut c = ctx(m);
    let row = decode_prompt(&mut c);
    assert!(s.sample(&c, row).is_err());
}

#[test]
fn failed_accept_in_llama_cpp_needs_reset() {
    // A lazy grammar allows everything until its trigger matches; then the
    // buffered text is replayed into the grammar, which rejects it and throws
    // with its stacks emptied. llama.cpp would abort on the next apply
    // (llama-grammar.cpp:948): the sampler refuses to work until reset().
    let m = tiny();
    let mut s = Sampler::builder(m)
        .grammar_lazy("root ::= \"yes\"", "root", &["[\\s\\S]*?(no)[\\s\\S]*"], &[])
        .dist(1)
        .build()
        .unwrap();
    s.accept(token_for(m, "n")).unwrap();
    assert!(matches!(s.accept(token_for(m, "o")), Err(Error::Exception { .. })));
    let mut c = ctx(m);
    let row = decode_prompt(&mut c);
    let err = s.sample(&c, row).unwrap_err();
    assert!(err.to_string().contains("reset"), "{err}");
    assert!(s.accept(token_for(m, "y")).is_err());
    s.reset().unwrap();
    s.sample(&c, row).unwrap();
}

fn grammar_yes_no(model: &'static Model) {
    let mut seen = std::collections::HashSet::new();
    for seed in 0..8 {
        let mut s =
            Sampler::builder(model).grammar("root ::= \"yes\" | \"no\"", "root").temp(1.5).dist(seed).build().unwrap();
        let mut c = ctx(model);
        let (text, stats) =
            c.generate_text(&mut s, "Answer: ", llama_rs::GenerateParams::default().max_tokens(16)).unwrap();
        assert!(text == "yes" || text == "no", "seed {seed}: {text:?}");
        assert_eq!(stats.stop_reason, llama_rs::StopReason::Eog);
        seen.insert(text);
    }
    // Both answers occur over these seeds (the synthetic weights are fixed).
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[test]
fn grammar_limits_output_spm() {
    grammar_yes_no(tiny());
}

#[test]
fn grammar_limits_output_bpe() {
    grammar_yes_no(tiny_bpe());
}

#[test]
fn sampler_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let s = Sampler::greedy(tiny()).unwrap();
    assert_send(&s);
    std::thread::scope(|scope| {
        scope.spawn(move || drop(s));
    });
}
