//! Tokenize/detokenize on the tiny SPM and BPE synthetic models (loaded once
//! per process): arbitrary text (any bytes, made UTF-8 lossily) with flags
//! from the input, then detokenize and token pieces of the result, and of
//! arbitrary token ids, which may be out of range: those must be `Err`.
//!
//! Input layout: 1 flag byte, 1 count byte `k`, `4 * (k % 16)` bytes of
//! token ids (little-endian i32), the rest is the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llama_rs::{Token, Vocab};
use llama_rs_fuzz::{tiny_bpe, tiny_spm};

fn in_range(vocab: &Vocab<'_>, t: Token) -> bool {
    t.0 >= 0 && t.0 < vocab.n_tokens()
}

fuzz_target!(
    init: {
        llama_rs_fuzz::init();
        let _ = (tiny_spm(), tiny_bpe());
    },
    |data: &[u8]| {
        let Some((&flags, rest)) = data.split_first() else { return };
        let (count, rest) = match rest.split_first() {
            Some((&c, r)) => ((c % 16) as usize, r),
            None => (0, rest),
        };
        let n_ids = count.min(rest.len() / 4);
        let (id_bytes, text) = rest.split_at(n_ids * 4);
        let ids: Vec<Token> =
            id_bytes.chunks_exact(4).map(|b| Token(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect();
        let text = String::from_utf8_lossy(text);
        let bit = |i: u32| flags & (1 << i) != 0;
        let model = if bit(0) { tiny_bpe() } else { tiny_spm() };
        let vocab = model.vocab();
        let (add_special, parse_special, remove_special, unparse_special, special) =
            (bit(1), bit(2), bit(3), bit(4), bit(5));

        let tokens = vocab.tokenize(&text, add_special.into(), parse_special.into()).expect("tokenize of valid UTF-8 text");
        for &t in &tokens {
            assert!(in_range(&vocab, t), "tokenize produced out-of-range id {}", t.0);
        }
        let _ = vocab.detokenize(&tokens, remove_special.into(), unparse_special.into()).expect("detokenize of tokenize's output");
        let mut pieces = Vec::new();
        for &t in tokens.iter().take(64) {
            vocab.token_to_piece_into(t, special.into(), &mut pieces).expect("piece of a valid token");
        }
        if bit(6) {
            // Appending to a non-empty buffer, as generation does.
            let mut out = tokens.clone();
            vocab.tokenize_into(&text, add_special.into(), parse_special.into(), &mut out).expect("tokenize_into");
            assert_eq!(&out[tokens.len()..], &tokens[..]);
        }

        // Arbitrary ids: Err when out of range, never an abort.
        for &t in &ids {
            let ok = in_range(&vocab, t);
            assert_eq!(vocab.check(t).is_ok(), ok);
            assert_eq!(vocab.token_to_piece(t, special.into()).is_ok(), ok, "token_to_piece({})", t.0);
            assert_eq!(vocab.token_text(t).is_ok(), ok, "token_text({})", t.0);
            assert_eq!(vocab.token_score(t).is_ok(), ok, "token_score({})", t.0);
            let _ = (vocab.is_eog(t), vocab.is_control(t));
        }
        let all_ok = ids.iter().all(|&t| in_range(&vocab, t));
        assert_eq!(vocab.detokenize(&ids, remove_special.into(), unparse_special.into()).is_ok(), all_ok);
        if all_ok && !ids.is_empty() {
            // Mixed: tokenizer output followed by the arbitrary ids.
            let mut mixed = tokens.clone();
            mixed.extend_from_slice(&ids);
            vocab.detokenize(&mixed, remove_special.into(), unparse_special.into()).expect("detokenize of valid ids");
        }
    }
);
