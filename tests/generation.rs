//! Streaming generation: stop strings across tokens, stop tokens, limits,
//! UTF-8 kept whole, prompts longer than the context, statistics.

mod common;

use common::tiny;
use llama_rs::{AddSpecial, ParseSpecial, RenderSpecial};
use llama_rs::{Context, ContextParams, Error, GenerateParams, Piece, Sampler, StopReason, Token};

const PROMPT: &str = "the quick brown fox jumps over the lazy dog and";

fn ctx(n_ctx: u32, n_batch: u32) -> Context<'static> {
    tiny().new_context(ContextParams::default().n_ctx(n_ctx).n_batch(n_batch).threads(2)).unwrap()
}

/// Greedy pieces with no stop condition but `max`.
fn greedy_pieces(params: GenerateParams) -> (Vec<Piece>, llama_rs::GenerationStats) {
    let mut c = ctx(256, 64);
    let mut s = Sampler::greedy(tiny()).unwrap();
    let mut g = c.generate(&mut s, PROMPT, params).unwrap();
    let pieces: Vec<Piece> = g.by_ref().map(|p| p.unwrap()).collect();
    let stats = g.stats().cloned().unwrap();
    (pieces, stats)
}

fn concat(pieces: &[Piece]) -> String {
    pieces.iter().map(|p| p.text.as_str()).collect()
}

/// Greedy with EOS banned, so that the reference run goes the full length.
fn no_eos() -> Sampler<'static> {
    let eos = tiny().vocab().eos().unwrap();
    Sampler::builder(tiny()).logit_bias(&[(eos, f32::NEG_INFINITY)]).greedy().build().unwrap()
}

fn run(params: GenerateParams) -> (Vec<Piece>, llama_rs::GenerationStats) {
    let mut c = ctx(256, 64);
    let mut s = no_eos();
    let mut g = c.generate(&mut s, PROMPT, params).unwrap();
    let pieces: Vec<Piece> = g.by_ref().map(|p| p.unwrap()).collect();
    (pieces, g.stats().cloned().unwrap())
}

#[test]
fn max_tokens_is_honoured() {
    let (pieces, stats) = run(GenerateParams::default().max_tokens(5));
    assert_eq!(pieces.len(), 5);
    assert_eq!(stats.generated_tokens, 5);
    assert_eq!(stats.stop_reason, StopReason::MaxTokens);
    assert_eq!(stats.prompt_tokens, tiny().vocab().tokenize(PROMPT, AddSpecial::Yes, ParseSpecial::Yes).unwrap().len());
    assert!(stats.time_to_first_token > std::time::Duration::ZERO);
    assert!(stats.prompt_tps > 0.0 && stats.generation_tps > 0.0);
}

#[test]
fn zero_max_tokens_decodes_the_prompt_only() {
    let mut c = ctx(256, 64);
    let mut s = no_eos();
    let mut g = c.generate(&mut s, PROMPT, GenerateParams::default().max_tokens(0)).unwrap();
    assert!(g.next().is_none());
    assert_eq!(g.stats().unwrap().generated_tokens, 0);
    assert_eq!(g.stats().unwrap().stop_reason, StopReason::MaxTokens);
}

#[test]
fn stop_string_spanning_tokens_is_not_emitted() {
    let (pieces, _) = run(GenerateParams::default().max_tokens(40));
    let full = concat(&pieces);
    // Find a token boundary where the last char before it and the first char
    // after it form a string that first occurs right there.
    let mut boundary = 0;
    let mut stop = None;
    for w in pieces.windows(2) {
        boundary += w[0].text.len();
        let (Some(a), Some(b)) = (w[0].text.chars().last(), w[1].text.chars().next()) else { continue };
        let s = format!("{a}{b}");
        if full.find(&s) == Some(boundary - a.len_utf8()) {
            stop = Some((s, boundary - a.len_utf8()));
            break;
        }
    }
    let (stop, at) = stop.expect("some boundary pair occurs first at its boundary");

    let (pieces, stats) = run(GenerateParams::default().max_tokens(40).stop_string(stop.clone()));
    let text = concat(&pieces);
    assert_eq!(text, full[..at], "text before the stop string is emitted, the stop string is not");
    assert_eq!(stats.stop_reason, StopReason::StopString(stop));
}

#[test]
fn text_that_only_starts_like_a_stop_string_is_emitted() {
    let (pieces, _) = run(GenerateParams::default().max_tokens(20));
    let full = concat(&pieces);
    // A stop string that shares a first character with the output but never occurs.
    let first = full.trim_start().chars().next().unwrap();
    let stop = format!("{first}\u{1}never");
    let (pieces, stats) = run(GenerateParams::default().max_tokens(20).stop_string(stop));
    assert_eq!(concat(&pieces), full);
    assert_eq!(stats.stop_reason, StopReason::MaxTokens);
}

#[test]
fn stop_token_ids_stop() {
    let (pieces, _) = run(GenerateParams::default().max_tokens(20));
    let k = 3;
    let t = pieces[k].token;
    let first = pieces.iter().position(|p| p.token == t).unwrap();
    let (stopped, stats) = run(GenerateParams::default().max_tokens(20).stop_token(t));
    assert_eq!(stats.stop_reason, StopReason::StopToken(t));
    assert_eq!(stats.generated_tokens, first + 1);
    assert_eq!(concat(&stopped), concat(&pieces[..first]), "the stop token's text is not emitted");
}

#[test]
fn eog_stops() {
    let eos = tiny().vocab().eos().unwrap();
    let mut s = Sampler::builder(tiny()).logit_bias(&[(eos, 1000.0)]).greedy().build().unwrap();
    let mut c = ctx(256, 64);
    let (text, stats) = c.generate_text(&mut s, PROMPT, GenerateParams::default()).unwrap();
    assert_eq!(text, "");
    assert_eq!(stats.stop_reason, StopReason::Eog);
    assert_eq!(stats.generated_tokens, 1);
}

#[test]
fn utf8_is_kept_whole_across_byte_tokens() {
    // The SPM vocabulary has no piece for these characters: the grammar makes
    // the model spell them with byte-fallback tokens, one byte each.
    let m = tiny();
    let mut s = Sampler::builder(m).grammar("root ::= \"é😀\"", "root").dist(1).build().unwrap();
    let mut c = ctx(256, 64);
    let mut g = c.generate(&mut s, PROMPT, GenerateParams::default().max_tokens(16)).unwrap();
    let pieces: Vec<Piece> = g.by_ref().map(|p| p.unwrap()).collect();
    assert_eq!(g.stats().unwrap().stop_reason, StopReason::Eog);
    assert_eq!(concat(&pieces), "é😀");
    assert_eq!(pieces.len(), 6, "{pieces:?}");
    for p in &pieces {
        assert!(m.vocab().token_text(p.token).unwrap().starts_with("<0x"), "{p:?} is a byte token");
    }
    let texts: Vec<&str> = pieces.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(texts, ["", "é", "", "", "", "😀"]);
}

#[test]
fn prompt_longer_than_context_is_error() {
    let mut c = ctx(256, 64);
    let mut s = Sampler::greedy(tiny()).unwrap();
    let long: Vec<Token> = std::iter::repeat_n(Token(300), 300).collect();
    let r = c.generate(&mut s, &long, GenerateParams::default());
    assert!(matches!(r, Err(Error::BatchInvalid { .. })), "{r:?}");
    // The context is still usable.
    let (_, stats) = c.generate_text(&mut s, PROMPT, GenerateParams::default().max_tokens(2)).unwrap();
    assert!(stats.generated_tokens >= 1);
}

#[test]
fn bad_prompts_and_params_are_errors() {
    let mut c = ctx(256, 64);
    let mut s = Sampler::greedy(tiny()).unwrap();
    assert!(c.generate(&mut s, &Vec::<Token>::new(), GenerateParams::default()).is_err());
    assert!(matches!(
        c.generate(&mut s, &vec![Token(1), Token(-3)], GenerateParams::default()),
        Err(Error::InvalidToken { .. })
    ));
    assert!(c.generate(&mut s, PROMPT, GenerateParams::default().stop_string("")).is_err());
    assert!(matches!(
        c.generate(&mut s, PROMPT, GenerateParams::default().stop_token(Token(1 << 20))),
        Err(Error::InvalidToken { .. })
    ));
}

#[test]
fn long_prompt_is_decoded_in_batches() {
    let tokens: Vec<Token> = (0..150).map(|i| Token(300 + i % 200)).collect();
    let mut reference = ctx(256, 256);
    let mut s = Sampler::greedy(tiny()).unwrap();
    let (a, _) = reference.generate_text(&mut s, &tokens, GenerateParams::default().max_tokens(4)).unwrap();
    let mut c = ctx(256, 16);
    let mut s = Sampler::greedy(tiny()).unwrap();
    let (b, stats) = c.generate_text(&mut s, &tokens, GenerateParams::default().max_tokens(4)).unwrap();
    assert_eq!(stats.prompt_tokens, 150);
    assert_eq!(c.seq_pos_max(0).unwrap(), Some(150 + 3 - 1), "prompt and all but the last token are in the cache");
    assert_eq!(a, b);
}

#[test]
fn context_full_stops() {
    let mut c = ctx(256, 64);
    let mut s = no_eos();
    let n_ctx = c.n_ctx() as usize;
    let prompt: Vec<Token> = (0..250).map(|i| Token(300 + i % 200)).collect();
    let (_, stats) = c.generate_text(&mut s, &prompt, GenerateParams::default().max_tokens(100)).unwrap();
    assert_eq!(stats.stop_reason, StopReason::ContextFull);
    assert_eq!(stats.generated_tokens, n_ctx - 250 + 1);
}

#[test]
fn generation_continues_from_the_cache_unless_cleared() {
    let mut c = ctx(256, 64);
    let mut s = no_eos();
    let n1 = {
        let mut g = c.generate(&mut s, PROMPT, GenerateParams::default().max_tokens(3)).unwrap();
        g.by_ref().for_each(|p| drop(p.unwrap()));
        g.n_past()
    };
    let prompt_len = tiny().vocab().tokenize(PROMPT, AddSpecial::Yes, ParseSpecial::Yes).unwrap().len() as i32;
    assert_eq!(n1, prompt_len + 2);
    let n2 = {
        let mut g = c
            .generate(&mut s, " more", GenerateParams::default().max_tokens(1).add_special(Some(AddSpecial::No)))
            .unwrap();
        g.by_ref().for_each(|p| drop(p.unwrap()));
        g.n_past()
    };
    let more = tiny().vocab().tokenize(" more", AddSpecial::No, ParseSpecial::Yes).unwrap().len() as i32;
    assert_eq!(n2, n1 + more);
    let n3 = {
        let mut g = c.generate(&mut s, PROMPT, GenerateParams::default().max_tokens(1).clear_kv(true)).unwrap();
        g.by_ref().for_each(|p| drop(p.unwrap()));
        g.n_past()
    };
    assert_eq!(n3, prompt_len);
}

#[test]
fn same_seed_generates_same_text() {
    let gen = |seed| {
        let mut c = ctx(256, 64);
        let mut s = Sampler::builder(tiny()).temp(1.2).dist(seed).build().unwrap();
        c.generate_text(&mut s, PROMPT, GenerateParams::default().max_tokens(24)).unwrap().0
    };
    assert_eq!(gen(5), gen(5));
}

#[test]
fn greedy_run_is_reproducible() {
    let (a, _) = greedy_pieces(GenerateParams::default().max_tokens(8));
    let (b, _) = greedy_pieces(GenerateParams::default().max_tokens(8));
    assert_eq!(a, b);
}

#[test]
fn bos_only_when_the_sequence_is_empty() {
    let v = tiny().vocab();
    assert!(v.add_bos(), "the tiny SPM model adds BOS");
    let with_bos = v.tokenize(PROMPT, AddSpecial::Yes, ParseSpecial::Yes).unwrap();
    let more = v.tokenize(" and more", AddSpecial::No, ParseSpecial::Yes).unwrap();
    assert_eq!(with_bos[0], v.bos().unwrap());
    let mut c = ctx(256, 64);
    let mut s = Sampler::greedy(tiny()).unwrap();
    let first = c.generate(&mut s, PROMPT, GenerateParams::default().max_tokens(1)).unwrap();
    let first = first.count();
    assert!(first <= 1);
    assert_eq!(c.seq_pos_max(0).unwrap(), Some(with_bos.len() as i32 - 1));
    let (_, stats) = c.generate_text(&mut s, " and more", GenerateParams::default().max_tokens(1)).unwrap();
    // Continuing the conversation: no second BOS.
    assert_eq!(stats.prompt_tokens, more.len());
    // Asked for explicitly, it is added.
    let (_, stats) = c
        .generate_text(&mut s, " and more", GenerateParams::default().max_tokens(1).add_special(Some(AddSpecial::Yes)))
        .unwrap();
    assert_eq!(stats.prompt_tokens, more.len() + 1);
}

#[test]
fn prompt_tokens_reach_the_penalties_not_the_grammar() {
    let m = tiny();
    let mut c = ctx(256, 64);
    let prompt = m.vocab().tokenize(PROMPT, AddSpecial::Yes, ParseSpecial::No).unwrap();
    let mut b = llama_rs::Batch::new(64, 1).unwrap();
    b.add_sequence(&prompt, 0, 0, true).unwrap();
    c.decode(&mut b).unwrap();
    let row = prompt.len() as i32 - 1;
    let g = Sampler::greedy(m).unwrap().sample(&c, row).unwrap();
    // A frequency penalty large enough to rule out any token seen before.
    let penalised = || Sampler::builder(m).penalties(64, 1.0, 1e9, 0.0).greedy().build().unwrap();
    assert_eq!(penalised().sample(&c, row).unwrap(), g, "nothing seen yet: the plain greedy token");
    let mut s = penalised();
    s.accept_prompt(&[g]).unwrap();
    assert_ne!(s.sample(&c, row).unwrap(), g, "the prompt's token is penalised");
    // A grammar does not see prompt tokens: one that only allows "yes" from
    // its start still takes "y" after a prompt of other text.
    let mut s = Sampler::builder(m).grammar("root ::= \"yes\"", "root").greedy().build().unwrap();
    s.accept_prompt(&prompt).unwrap();
    let v = m.vocab();
    let y = (0..v.n_tokens()).map(Token).find(|&t| v.token_to_piece(t, RenderSpecial::No).unwrap() == b"y").unwrap();
    s.accept(y).unwrap();
}
