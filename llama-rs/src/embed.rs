//! Embeddings and reranking: the pooling of an embeddings context, and
//! [`Embedder`], which turns texts into vectors (or query-document pairs into
//! relevance scores) in as few decodes as they fit in.

use crate::batch::Batch;
use crate::context::{Context, ContextParams};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::vocab::{AddSpecial, ParseSpecial, Token};
use llama_sys as sys;
use std::sync::Arc;

/// How an embeddings context turns the token embeddings of a sequence into
/// one row ([`Context::seq_embeddings`]); llama.cpp's `llama_pooling_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Pooling {
    /// No pooling: one row per token ([`Context::embeddings`]).
    None,
    /// The mean of the sequence's token embeddings.
    Mean,
    /// The embedding of the sequence's first token (BERT's `[CLS]`).
    Cls,
    /// The embedding of the sequence's last token.
    Last,
    /// The model's classifier head on the pooled sequence: relevance scores
    /// ([`Model::n_cls_out`] per sequence), for reranking models.
    Rank,
}

impl Pooling {
    pub(crate) fn raw(self) -> sys::llama_pooling_type {
        match self {
            Pooling::None => sys::LLAMA_POOLING_TYPE_NONE,
            Pooling::Mean => sys::LLAMA_POOLING_TYPE_MEAN,
            Pooling::Cls => sys::LLAMA_POOLING_TYPE_CLS,
            Pooling::Last => sys::LLAMA_POOLING_TYPE_LAST,
            Pooling::Rank => sys::LLAMA_POOLING_TYPE_RANK,
        }
    }

    /// The pooling of a raw value; `None` for UNSPECIFIED and unknown values.
    pub(crate) fn from_raw(raw: sys::llama_pooling_type) -> Option<Pooling> {
        [Pooling::None, Pooling::Mean, Pooling::Cls, Pooling::Last, Pooling::Rank].into_iter().find(|p| p.raw() == raw)
    }

    /// The name llama.cpp's tools use: `none`, `mean`, `cls`, `last`, `rank`.
    pub fn name(self) -> &'static str {
        match self {
            Pooling::None => "none",
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Last => "last",
            Pooling::Rank => "rank",
        }
    }
}

impl std::fmt::Display for Pooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Pooling {
    type Err = Error;
    fn from_str(s: &str) -> Result<Pooling> {
        [Pooling::None, Pooling::Mean, Pooling::Cls, Pooling::Last, Pooling::Rank]
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| Error::invalid("pooling", s, "expected none, mean, cls, last or rank"))
    }
}

/// What llama.cpp loaded of a model's pooling and classifier head.
struct PoolingInfo {
    pooling: Option<Pooling>,
    has_classifier: bool,
    n_cls_out: u32,
    rank_width: i64,
    rank_mean: bool,
}

fn pooling_info(model: &Model) -> PoolingInfo {
    let mut raw = sys::llama_rs_pooling_info::default();
    // SAFETY: live model; the shim fills the struct from the loaded
    // hyperparameters and tensor pointers, catching any exception.
    let status = unsafe { sys::llama_rs_model_pooling_info(model.as_ptr(), &mut raw) };
    if status != 0 {
        // Reading four fields cannot throw; be conservative if it did.
        return PoolingInfo { pooling: None, has_classifier: false, n_cls_out: 0, rank_width: 0, rank_mean: false };
    }
    PoolingInfo {
        pooling: Pooling::from_raw(raw.pooling_type),
        has_classifier: raw.has_classifier,
        n_cls_out: raw.n_cls_out,
        rank_width: raw.rank_width,
        rank_mean: raw.rank_mean,
    }
}

/// Embeddings-related facts of a model.
impl Model {
    /// The pooling the model asks for (`<arch>.pooling_type`, or its
    /// architecture's default), `None` when it names none (generative models):
    /// an embeddings context then does not pool unless
    /// [`ContextParams::pooling`] says so.
    pub fn pooling(&self) -> Option<Pooling> {
        pooling_info(self).pooling
    }

    /// Whether llama.cpp loaded a classifier head (`cls.weight` or
    /// `cls.output.weight`): what [`Pooling::Rank`] needs.
    pub fn has_classifier(&self) -> bool {
        pooling_info(self).has_classifier
    }

    /// The number of classifier outputs: the width of a rank-pooled row
    /// (`<arch>.classifier.output_labels` count, 1 when the file has none).
    pub fn n_cls_out(&self) -> u32 {
        // SAFETY: live model; llama.cpp returns the loaded hyperparameter
        // (its "undefined for non-classifier models" is the default, 1).
        unsafe { sys::llama_model_n_cls_out(self.as_ptr()) }
    }

    /// The classifier's output labels (`<arch>.classifier.output_labels`),
    /// empty when the file names none; Qwen3 rerankers have `yes` and `no`.
    pub fn classifier_labels(&self) -> Vec<String> {
        (0..self.n_cls_out())
            .map_while(|i| {
                // SAFETY: live model; llama.cpp bounds-checks i and returns
                // NULL past its label list; the string is owned by the model
                // and copied at once.
                let p = unsafe { sys::llama_model_cls_label(self.as_ptr(), i) };
                // SAFETY: NULL or a NUL-terminated string owned by the model.
                (!p.is_null()).then(|| unsafe { crate::ffi::string_from_ptr(p) })
            })
            .collect()
    }
}

/// Checks the pooling an embeddings context will resolve to (`asked`, else
/// the model's) against what the model and the context's sizes allow;
/// `reserve_tokens` is the micro-batch llama.cpp reserves its graph for,
/// `min(n_ctx padded to 256, n_batch, n_ubatch)`.
///
/// - Mean pooling (and rank pooling that averages first): llama.cpp reserves
///   its graph for `reserve_tokens` rounded up to a multiple of `n_seq_max`
///   but with outputs for `reserve_tokens` only (`llama-context.cpp`
///   graph_reserve and sched_reserve), so the mean's matrix product gets
///   operands of different lengths and ggml's shape assert aborts at context
///   creation unless `n_seq_max` divides `reserve_tokens`.
/// - Rank pooling without a classifier head copies `n_cls_out` values per
///   sequence out of the pooled token row, past its end when `n_cls_out`
///   exceeds its width, which aborts in ggml's tensor-get bounds assert at the
///   first decode; below it, the "scores" are an embedding's first values.
pub(crate) fn check_pooling(model: &Model, asked: Option<Pooling>, reserve_tokens: u32, n_seq_max: u32) -> Result<()> {
    let info = pooling_info(model);
    let pooling = asked.or(info.pooling);
    let averages = pooling == Some(Pooling::Mean) || (pooling == Some(Pooling::Rank) && info.rank_mean);
    if averages && n_seq_max > 1 && !reserve_tokens.is_multiple_of(n_seq_max) {
        return Err(Error::invalid(
            "n_seq_max",
            n_seq_max,
            format!(
                "with {} pooling llama.cpp splits its graph's micro-batch of min(n_ctx, n_batch, n_ubatch) = \
                 {reserve_tokens} tokens evenly over the sequences: make it a multiple of n_seq_max",
                pooling.map_or("", Pooling::name)
            ),
        ));
    }
    if pooling != Some(Pooling::Rank) {
        return Ok(());
    }
    let whose = if asked.is_some() { "asked for" } else { "the model's default" };
    if !info.has_classifier {
        return Err(Error::invalid(
            "pooling",
            format!("rank ({whose})"),
            "the model has no classifier head (cls.weight or cls.output.weight): rank pooling needs a reranking \
             model; choose another pooling (ContextParams::pooling)",
        ));
    }
    if i64::from(info.n_cls_out) > info.rank_width {
        return Err(Error::invalid(
            "pooling",
            format!("rank ({whose})"),
            format!(
                "the model has {} classifier labels but its head computes {} values per sequence",
                info.n_cls_out, info.rank_width
            ),
        ));
    }
    Ok(())
}

/// Whether [`Embedder::embed`] scales each vector to unit length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Normalize {
    /// Euclidean (L2) norm 1, so that a dot product is the cosine similarity
    /// (the default, as llama.cpp's embedding tool and server do).
    #[default]
    L2,
    /// The pooled rows as the model gives them.
    None,
}

/// Parameters of an [`Embedder`]; a setter for each, checked when the
/// embedder is created. Defaults: the model's pooling, [`Normalize::L2`],
/// 2048 tokens per batch, 16 sequences per batch, the physical CPU cores as
/// threads.
#[derive(Clone, Debug)]
pub struct EmbedParams {
    pooling: Option<Pooling>,
    normalize: Normalize,
    batch_tokens: u32,
    max_sequences: u32,
    threads: u32,
}

impl Default for EmbedParams {
    fn default() -> Self {
        EmbedParams {
            pooling: None,
            normalize: Normalize::L2,
            batch_tokens: 2048,
            max_sequences: 16,
            threads: crate::backend::physical_cores(),
        }
    }
}

impl EmbedParams {
    /// The pooling to use instead of the model's own ([`Model::pooling`]);
    /// needed for a model that names none (generative models): e.g.
    /// [`Pooling::Mean`]. [`Pooling::None`] is refused: an embedder returns
    /// one vector per input.
    pub fn pooling(mut self, pooling: Pooling) -> Self {
        self.pooling = Some(pooling);
        self
    }
    /// Whether [`Embedder::embed`] normalizes its vectors (default
    /// [`Normalize::L2`]); rerank scores are never normalized.
    pub fn normalize(mut self, normalize: Normalize) -> Self {
        self.normalize = normalize;
        self
    }
    /// The most tokens one decode takes (the context's n_ctx, n_batch and
    /// n_ubatch; default 2048), rounded down to a multiple of
    /// [`max_sequences`](Self::max_sequences) (llama.cpp splits its mean
    /// pooling evenly over the sequences): also the longest input, in tokens,
    /// the embedder accepts ([`Embedder::max_tokens`]).
    pub fn batch_tokens(mut self, n: u32) -> Self {
        self.batch_tokens = n;
        self
    }
    /// The most inputs one decode takes, one sequence each (default 16; at
    /// most 256 and at most `batch_tokens`).
    pub fn max_sequences(mut self, n: u32) -> Self {
        self.max_sequences = n;
        self
    }
    /// Threads for the decodes.
    pub fn threads(mut self, n: u32) -> Self {
        self.threads = n;
        self
    }

    /// The context parameters an embedder needs: one unified KV cache (so
    /// that llama.cpp never splits a sequence over micro-batches, which would
    /// pool each part on its own) and one micro-batch per decode (non-causal
    /// models need their whole input at once; llama.cpp aborts otherwise).
    fn context_params(&self) -> ContextParams {
        // (Fewer tokens than sequences is left for the context's own check.)
        let tokens = match self.max_sequences {
            n if n > 0 && self.batch_tokens >= n => self.batch_tokens / n * n,
            _ => self.batch_tokens,
        };
        let mut p = ContextParams::default()
            .embeddings(true)
            .kv_unified(true)
            .n_ctx(tokens)
            .n_batch(tokens)
            .n_ubatch(tokens)
            .n_seq_max(self.max_sequences)
            .threads(self.threads);
        if let Some(pooling) = self.pooling {
            p = p.pooling(pooling);
        }
        p
    }
}

/// Turns texts into embedding vectors, or query-document pairs into
/// relevance scores, with a [`Context`] of its own.
///
/// A type of its own rather than a method of [`Context`]: pooled embeddings
/// are only right when every input is decoded whole, in one micro-batch,
/// from an empty cache, so the embedder owns a context built for that (an
/// embeddings context with one unified KV cache and `n_ubatch = n_batch`),
/// packs as many inputs as fit into each decode (one sequence each, up to
/// [`EmbedParams::max_sequences`] and [`EmbedParams::batch_tokens`]), and
/// clears the cache between decodes, which a general-purpose context that
/// also holds a conversation must not do behind its owner's back.
///
/// `Send`, not `Sync` (it is a context): move it to a worker thread; create
/// one per thread for parallel work.
///
/// ```no_run
/// # fn f() -> llama_rs::Result<()> {
/// use llama_rs::{EmbedParams, Embedder, Model, Pooling};
/// let model = Model::load("model.gguf")?;
/// let mut embedder = Embedder::new(&model, EmbedParams::default().pooling(Pooling::Mean))?;
/// let v = embedder.embed(&["The cat sat on the mat.", "A cat was sitting on the rug."])?;
/// let cosine: f32 = v[0].iter().zip(&v[1]).map(|(a, b)| a * b).sum(); // unit vectors
/// # let _ = cosine; Ok(()) }
/// ```
pub struct Embedder<'m> {
    ctx: Context<'m>,
    batch: Batch,
    normalize: Normalize,
    max_sequences: usize,
    /// The longest input: the context's n_ubatch (one micro-batch).
    limit: usize,
}

impl std::fmt::Debug for Embedder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("pooling", &self.ctx.pooling())
            .field("normalize", &self.normalize)
            .field("max_tokens", &self.limit)
            .field("max_sequences", &self.max_sequences)
            .finish()
    }
}

impl<'m> Embedder<'m> {
    /// An embedder on a borrowed model.
    pub fn new(model: &'m Model, params: EmbedParams) -> Result<Embedder<'m>> {
        Embedder::with_context(model.new_context(params.context_params())?, &params)
    }

    /// An embedder that holds its model through the `Arc`: `'static`, for a
    /// server's shared state or a worker thread.
    pub fn new_owned(model: &Arc<Model>, params: EmbedParams) -> Result<Embedder<'static>> {
        Embedder::with_context(model.new_owned_context(params.context_params())?, &params)
    }

    fn with_context<'c>(ctx: Context<'c>, params: &EmbedParams) -> Result<Embedder<'c>> {
        if ctx.pooling() == Pooling::None {
            return Err(Error::invalid(
                "pooling",
                "none",
                "an embedder gives one vector per input: choose a pooling (EmbedParams::pooling(Pooling::Mean) for \
                 a generative model); per-token rows come from a Context created with embeddings(true)",
            ));
        }
        // One micro-batch, and no position past the model's learned ones.
        let positions = ctx.max_positions().map_or(usize::MAX, |p| p as usize);
        let limit = (ctx.n_ubatch().min(ctx.n_batch()) as usize).min(positions);
        Ok(Embedder {
            batch: Batch::new(limit, 1)?,
            normalize: params.normalize,
            max_sequences: ctx.n_seq_max() as usize,
            limit,
            ctx,
        })
    }

    /// The context the embedder decodes with.
    pub fn context(&self) -> &Context<'m> {
        &self.ctx
    }

    /// The model.
    pub fn model(&self) -> &Model {
        self.ctx.model()
    }

    /// The pooling in use.
    pub fn pooling(&self) -> Pooling {
        self.ctx.pooling()
    }

    /// The length of the vectors [`embed`](Self::embed) returns
    /// ([`Model::n_embd_out`]), or the scores per input for rank pooling
    /// ([`Model::n_cls_out`]).
    pub fn dim(&self) -> usize {
        match self.pooling() {
            Pooling::Rank => self.model().n_cls_out() as usize,
            _ => self.model().n_embd_out() as usize,
        }
    }

    /// The longest input in tokens: [`EmbedParams::batch_tokens`] as
    /// llama.cpp set the context up, or the positions the model knows
    /// ([`Context::max_positions`]) when fewer.
    pub fn max_tokens(&self) -> usize {
        self.limit
    }

    /// One vector per text, in order ([`dim`](Self::dim) floats each,
    /// normalized as [`EmbedParams::normalize`] says). Each text is
    /// tokenized as a sequence of its own: with the model's BOS/EOS
    /// ([`AddSpecial::Yes`]) and without turning special-token text into
    /// special tokens ([`ParseSpecial::No`]; llama.cpp's tools parse it:
    /// use [`embed_tokens`](Self::embed_tokens) for that).
    ///
    /// A text longer than [`max_tokens`](Self::max_tokens) is an
    /// [`Error::InputTooLong`] naming its index; a rank-pooling (reranking)
    /// model is used through [`rerank`](Self::rerank).
    pub fn embed<S: AsRef<str>>(&mut self, texts: &[S]) -> Result<Vec<Vec<f32>>> {
        if self.pooling() == Pooling::Rank {
            return Err(Error::invalid(
                "pooling",
                "rank",
                "this model pools with its classifier head: it scores query-document pairs (Embedder::rerank), \
                 it does not embed texts; choose another pooling (EmbedParams::pooling) for vectors",
            ));
        }
        let vocab = self.ctx.vocab();
        let inputs = texts
            .iter()
            .map(|t| vocab.tokenize(t.as_ref(), AddSpecial::Yes, ParseSpecial::No))
            .collect::<Result<Vec<_>>>()?;
        self.embed_tokens(&inputs)
    }

    /// As [`embed`](Self::embed), for inputs already tokenized (special
    /// tokens included as the caller wants them). With rank pooling, each row
    /// is the classifier's [`Model::n_cls_out`] raw scores.
    pub fn embed_tokens<T: AsRef<[Token]>>(&mut self, inputs: &[T]) -> Result<Vec<Vec<f32>>> {
        let normalize = self.normalize == Normalize::L2 && self.pooling() != Pooling::Rank;
        self.run(inputs, normalize)
    }

    /// The relevance score of each document for `query`, in document order
    /// (higher: more relevant), for a reranking model (rank pooling: a
    /// classifier head; [`Error::InvalidParam`] otherwise).
    ///
    /// Each pair is built as llama.cpp's server builds it
    /// (`format_prompt_rerank` in `tools/server/server-common.cpp`): with the
    /// model's rerank template (`tokenizer.chat_template.rerank`, where
    /// `{query}` and `{document}` are replaced by the texts and the result is
    /// tokenized with special-token text parsed, as the server does: a query
    /// or document containing such text reaches the model as those tokens),
    /// else as `[BOS] query [EOS] [SEP] document [EOS]`, each special token
    /// only where the vocabulary adds it (EOS falls back to SEP) and the texts
    /// tokenized without special tokens. The score is the classifier's first
    /// output for the pair, as the server reports it (for Qwen3 rerankers
    /// the probability of "yes"). A pair longer than
    /// [`max_tokens`](Self::max_tokens) is an [`Error::InputTooLong`] naming
    /// the document's index.
    pub fn rerank<S: AsRef<str>>(&mut self, query: &str, documents: &[S]) -> Result<Vec<f32>> {
        if self.pooling() != Pooling::Rank {
            return Err(Error::invalid(
                "pooling",
                self.pooling().name(),
                "reranking needs rank pooling: a model with a classifier head (a reranker), whose default pooling \
                 is rank, or EmbedParams::pooling(Pooling::Rank)",
            ));
        }
        let inputs = rerank_inputs(self.ctx.model(), query, documents)?;
        Ok(self.run(&inputs, false)?.into_iter().map(|row| row.first().copied().unwrap_or(f32::NAN)).collect())
    }

    /// Decodes the inputs, as many per decode as fit, each from an empty
    /// cache, and returns one pooled row each.
    fn run<T: AsRef<[Token]>>(&mut self, inputs: &[T], normalize: bool) -> Result<Vec<Vec<f32>>> {
        for (index, input) in inputs.iter().enumerate() {
            let n_tokens = input.as_ref().len();
            if n_tokens == 0 {
                return Err(Error::invalid(
                    "input",
                    index,
                    "has no tokens (an empty text with a vocabulary that adds no BOS): nothing to pool",
                ));
            }
            if n_tokens > self.limit {
                return Err(Error::InputTooLong { index, n_tokens, limit: self.limit });
            }
        }
        let mut out = crate::ffi::try_with_capacity(inputs.len(), "embeddings", inputs.len() * self.dim() * 4)?;
        let mut next = 0;
        while next < inputs.len() {
            self.batch.clear();
            let mut seqs = 0;
            while next + seqs < inputs.len() && seqs < self.max_sequences {
                let tokens = inputs[next + seqs].as_ref();
                if self.batch.len() + tokens.len() > self.limit {
                    break;
                }
                // Every row is an output of an embeddings context anyway
                // (llama.cpp's pooled decode requires it).
                for (pos, &t) in tokens.iter().enumerate() {
                    self.batch.add(t, pos as i32, &[seqs as i32], true)?;
                }
                seqs += 1;
            }
            // A fresh cache: each input is pooled over its own tokens only,
            // whatever was decoded before.
            self.ctx.clear_kv(false);
            self.ctx.decode(&mut self.batch)?;
            for s in 0..seqs {
                let mut row = self.ctx.seq_embeddings(s as i32)?.to_vec();
                if normalize {
                    l2_normalize(&mut row);
                }
                out.push(row);
            }
            next += seqs;
        }
        Ok(out)
    }
}

/// Scales `v` to Euclidean norm 1 (all zeros stay zeros), as llama.cpp's
/// `common_embd_normalize` with norm 2.
fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
    if norm > 0.0 {
        let scale = (1.0 / norm) as f32;
        v.iter_mut().for_each(|x| *x *= scale);
    }
}

/// The tokens of each (query, document) pair, as llama.cpp's server builds
/// them (`format_prompt_rerank`).
fn rerank_inputs<S: AsRef<str>>(model: &Model, query: &str, documents: &[S]) -> Result<Vec<Vec<Token>>> {
    let vocab = model.vocab();
    if let Some(template) = model.chat_template(Some("rerank")) {
        return documents
            .iter()
            .map(|d| {
                let prompt = template.replace("{query}", query).replace("{document}", d.as_ref());
                vocab.tokenize(&prompt, AddSpecial::No, ParseSpecial::Yes)
            })
            .collect();
    }
    // SAFETY: live model; the vocabulary lives as long as it; a plain query.
    let add_sep = unsafe { sys::llama_vocab_get_add_sep(sys::llama_model_get_vocab(model.as_ptr())) };
    let missing = |what: &str| Error::Tokenize {
        message: format!("the vocabulary adds a {what} token to rerank pairs but has none: the model cannot rerank"),
    };
    let bos = if vocab.add_bos() { Some(vocab.bos().ok_or_else(|| missing("BOS"))?) } else { None };
    let eos = if vocab.add_eos() { Some(vocab.eos().or(vocab.sep()).ok_or_else(|| missing("EOS"))?) } else { None };
    let sep = if add_sep { Some(vocab.sep().ok_or_else(|| missing("separator"))?) } else { None };
    let query = vocab.tokenize(query, AddSpecial::No, ParseSpecial::No)?;
    documents
        .iter()
        .map(|d| {
            let doc = vocab.tokenize(d.as_ref(), AddSpecial::No, ParseSpecial::No)?;
            let mut pair = Vec::with_capacity(query.len() + doc.len() + 4);
            pair.extend(bos);
            pair.extend_from_slice(&query);
            pair.extend(eos);
            pair.extend(sep);
            pair.extend_from_slice(&doc);
            pair.extend(eos);
            Ok(pair)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_names_round_trip() {
        for p in [Pooling::None, Pooling::Mean, Pooling::Cls, Pooling::Last, Pooling::Rank] {
            assert_eq!(p.name().parse::<Pooling>().unwrap(), p);
            assert_eq!(Pooling::from_raw(p.raw()), Some(p));
        }
        assert_eq!(Pooling::from_raw(sys::LLAMA_POOLING_TYPE_UNSPECIFIED), None);
        assert!("max".parse::<Pooling>().is_err());
    }

    #[test]
    fn l2_normalize_gives_unit_vectors_and_keeps_zeros() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, [0.6, 0.8]);
        let mut z = vec![0.0; 3];
        l2_normalize(&mut z);
        assert_eq!(z, [0.0; 3]);
    }
}
