//! [`VocabKind`] and the vocabulary builder: SentencePiece and byte-level
//! BPE token lists (with scores, types and merges) that tokenize any text.

use std::collections::HashSet;

// GGUF token types (`llama_token_type` in llama.h).
const TOKEN_TYPE_NORMAL: i32 = 1;
const TOKEN_TYPE_UNKNOWN: i32 = 2;
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_BYTE: i32 = 6;

/// The tokenizer flavour of a synthetic model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VocabKind {
    /// SentencePiece (`tokenizer.ggml.model` = "llama", like Llama 2):
    /// `<unk>`, `<s>`, `</s>`, the byte-fallback tokens `<0x00>`..`<0xFF>`,
    /// pieces with `▁` for spaces, and `<|im_start|>`/`<|im_end|>` for the
    /// default ChatML template.
    Spm,
    /// Byte-level BPE (`tokenizer.ggml.model` = "gpt2", pre-tokenizer
    /// "llama-bpe", like Llama 3): the 256 byte symbols, merged pieces with a
    /// consistent merge list, and Llama 3's control tokens
    /// (`<|begin_of_text|>`, `<|end_of_text|>`, `<|start_header_id|>`,
    /// `<|end_header_id|>`, `<|eot_id|>`).
    Bpe,
}

impl VocabKind {
    pub(super) fn label(self) -> &'static str {
        match self {
            VocabKind::Spm => "spm",
            VocabKind::Bpe => "bpe",
        }
    }

    /// Tokens the vocabulary has before any merged piece.
    pub(super) fn min_tokens(self) -> u32 {
        match self {
            VocabKind::Spm => (SPM_SPECIALS.len() + SPM_CONTROL_TAIL.len() + 256 + spm_singles().len()) as u32,
            VocabKind::Bpe => (BPE_SPECIALS.len() + 256) as u32,
        }
    }

    /// The chat template written by default: one llama.cpp's built-in
    /// detector recognises (ChatML for SPM, Llama 3 for BPE).
    pub fn default_chat_template(self) -> &'static str {
        match self {
            VocabKind::Spm => CHATML_TEMPLATE,
            VocabKind::Bpe => LLAMA3_TEMPLATE,
        }
    }
}

/// ChatML (detected by llama.cpp from `<|im_start|>`).
const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Llama 3 (detected by llama.cpp from `<|start_header_id|>` and `<|end_header_id|>`).
const LLAMA3_TEMPLATE: &str = "{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}";

/// A generated vocabulary, ready for the tokenizer.ggml.* keys.
pub(super) struct Vocab {
    pub(super) tokens: Vec<String>,
    pub(super) scores: Option<Vec<f32>>,
    pub(super) types: Vec<i32>,
    pub(super) merges: Vec<String>,
    pub(super) bos: u32,
    pub(super) eos: u32,
    pub(super) unk: Option<u32>,
    pub(super) eot: Option<u32>,
}

const SPM_SPECIALS: [&str; 3] = ["<unk>", "<s>", "</s>"];
const SPM_CONTROL_TAIL: [&str; 2] = ["<|im_start|>", "<|im_end|>"];
const BPE_SPECIALS: [&str; 5] =
    ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"];

/// Common English words and subwords, most frequent first.
const WORDS: &[&str] = &[
    "the", "a", "of", "and", "to", "in", "is", "it", "that", "for", "you", "was", "with", "on", "as", "have", "be",
    "at", "not", "this", "are", "but", "they", "his", "from", "had", "she", "which", "or", "we", "an", "there", "her",
    "were", "one", "do", "been", "all", "their", "has", "would", "will", "what", "if", "can", "when", "so", "no",
    "said", "who", "more", "about", "up", "out", "them", "some", "could", "him", "into", "its", "then", "two", "time",
    "like", "other", "only", "my", "your", "than", "first", "new", "very", "people", "just", "over", "any", "now",
    "also", "after", "know", "because", "most", "world", "hello", "Hello", "The", "This", "It", "In", "I", "We",
    "model", "token", "text", "language", "data", "write", "read", "good", "make", "work", "way", "year", "day", "man",
    "woman", "thing", "life", "child", "hand", "part", "place", "case", "week", "point", "number", "group", "problem",
    "fact", "ing", "ed", "er", "es", "ly", "tion", "ment", "ness", "able", "al", "re", "un", "th", "he", "an", "in",
    "on", "at", "en", "nd", "st", "or", "ou", "ll", "ve", "se", "le", "ar", "ro", "is", "it", "ch", "sh", "ol", "el",
    "lo",
];

/// Consonant-vowel syllables for pseudo-words (all 2 bytes, so distinct
/// syllable sequences give distinct words).
fn syllable(i: usize) -> [u8; 2] {
    const C: &[u8] = b"bcdfghjklmnprstvwxyz";
    const V: &[u8] = b"aeiou";
    [C[i / V.len() % C.len()], V[i % V.len()]]
}

/// The i-th pseudo-word (bijective base-100 numeration over syllables).
fn pseudo_word(i: usize) -> String {
    let mut n = i + 1;
    let mut out = Vec::new();
    while n > 0 {
        n -= 1;
        out.extend_from_slice(&syllable(n % 100));
        n /= 100;
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Single-character SPM pieces (letters, digits, punctuation, `▁`).
fn spm_singles() -> Vec<String> {
    let mut v = vec!["▁".to_string()];
    v.extend((b'a'..=b'z').chain(b'A'..=b'Z').chain(b'0'..=b'9').map(|c| (c as char).to_string()));
    v.extend(".,!?'\"-:;()".chars().map(|c| c.to_string()));
    v
}

/// Unique-string token list with a budget.
struct Builder {
    tokens: Vec<String>,
    seen: HashSet<String>,
    budget: usize,
}

impl Builder {
    fn new(budget: usize) -> Builder {
        Builder { tokens: Vec::new(), seen: HashSet::new(), budget }
    }

    fn full(&self) -> bool {
        self.tokens.len() >= self.budget
    }

    fn contains(&self, s: &str) -> bool {
        self.seen.contains(s)
    }

    /// Adds `s` unless present or full; true if added.
    fn add(&mut self, s: String) -> bool {
        if self.full() || self.seen.contains(&s) {
            return false;
        }
        self.seen.insert(s.clone());
        self.tokens.push(s);
        true
    }
}

pub(super) fn build_spm(n_vocab: usize) -> Vocab {
    let n_fixed = SPM_SPECIALS.len() + 256 + SPM_CONTROL_TAIL.len();
    let mut pieces = Builder::new(n_vocab - n_fixed);
    // The byte tokens and specials are in the final list; reserve their
    // strings so that no piece collides with them.
    let reserved: HashSet<String> = SPM_SPECIALS
        .iter()
        .chain(SPM_CONTROL_TAIL.iter())
        .map(|s| s.to_string())
        .chain((0..=255u8).map(|b| format!("<0x{b:02X}>")))
        .collect();
    pieces.seen.extend(reserved);
    for s in spm_singles() {
        pieces.add(s);
    }
    // Every prefix of a piece is a piece too, so SentencePiece's bigram
    // merging can reach it.
    let add_word = |pieces: &mut Builder, word: &str| {
        let chars: Vec<char> = word.chars().collect();
        for end in 2..=chars.len() {
            pieces.add(chars[..end].iter().collect());
        }
    };
    for w in WORDS {
        add_word(&mut pieces, &format!("▁{w}"));
    }
    for w in WORDS {
        add_word(&mut pieces, w);
    }
    let mut i = 0;
    while !pieces.full() {
        let w = pseudo_word(i);
        add_word(&mut pieces, &format!("▁{w}"));
        add_word(&mut pieces, &w);
        i += 1;
    }

    let mut tokens: Vec<String> = SPM_SPECIALS.iter().map(|s| s.to_string()).collect();
    let mut types = vec![TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_CONTROL, TOKEN_TYPE_CONTROL];
    let mut scores = vec![0.0f32; 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(TOKEN_TYPE_BYTE);
        scores.push(0.0);
    }
    for (rank, p) in pieces.tokens.into_iter().enumerate() {
        tokens.push(p);
        types.push(TOKEN_TYPE_NORMAL);
        scores.push(-(rank as f32));
    }
    for s in SPM_CONTROL_TAIL {
        tokens.push(s.to_string());
        types.push(TOKEN_TYPE_CONTROL);
        scores.push(0.0);
    }
    Vocab { tokens, scores: Some(scores), types, merges: Vec::new(), bos: 1, eos: 2, unk: Some(0), eot: None }
}

/// GPT-2's byte-to-unicode table: printable bytes map to themselves, the
/// others to U+0100 onwards.
fn byte_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let cp = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        table[b as usize] = char::from_u32(cp).unwrap_or('?');
    }
    table
}

pub(super) fn build_bpe(n_vocab: usize) -> Vocab {
    let table = byte_to_unicode();
    let encode = |s: &str| -> String { s.bytes().map(|b| table[b as usize]).collect() };
    let mut b = Builder::new(n_vocab - BPE_SPECIALS.len());
    b.seen.extend(BPE_SPECIALS.iter().map(|s| s.to_string()));
    for c in table {
        b.add(c.to_string());
    }
    let mut merges = Vec::new();
    // Left-to-right merges: every prefix of a word is a token made by merging
    // the previous prefix with one symbol, so every merge "a b" has a, b and
    // ab in the vocabulary.
    let add_word = |b: &mut Builder, merges: &mut Vec<String>, word: &str| {
        let symbols: Vec<char> = word.chars().collect();
        let mut prefix = symbols[0].to_string();
        for &c in &symbols[1..] {
            let next = format!("{prefix}{c}");
            if !b.contains(&next) {
                if !b.add(next.clone()) {
                    return;
                }
                merges.push(format!("{prefix} {c}"));
            }
            prefix = next;
        }
    };
    for w in WORDS {
        add_word(&mut b, &mut merges, &encode(&format!(" {w}")));
    }
    for w in WORDS {
        add_word(&mut b, &mut merges, &encode(w));
    }
    let mut i = 0;
    while !b.full() {
        let w = pseudo_word(i);
        add_word(&mut b, &mut merges, &encode(&format!(" {w}")));
        add_word(&mut b, &mut merges, &encode(&w));
        i += 1;
    }
    let mut tokens = b.tokens;
    let mut types = vec![TOKEN_TYPE_NORMAL; tokens.len()];
    let first_special = tokens.len() as u32;
    for s in BPE_SPECIALS {
        tokens.push(s.to_string());
        types.push(TOKEN_TYPE_CONTROL);
    }
    Vocab {
        tokens,
        scores: None,
        types,
        merges,
        bos: first_special,
        eos: first_special + 1,
        unk: None,
        eot: Some(first_special + 4),
    }
}
