//! Safe, in-process llama.cpp for Rust: load GGUF models, tokenize, decode,
//! sample and generate, on the CPU, on AMD GPUs (ROCm, feature `hip`) and on
//! NVIDIA GPUs (feature `cuda`), across several GPUs with llama.cpp's split
//! modes.
//!
//! Nothing safe code can do with this crate aborts the process: every input
//! that llama.cpp would assert on is checked first, and every C++ exception is
//! caught at the boundary and returned as an [`Error`].
//!
//! llama.cpp's log lines go to [`tracing`] (target `llama_cpp`); the library
//! prints nothing by itself.
//!
//! Feature `synthetic` (off by default) adds `llama_rs::synthetic`: a writer of
//! llama- and Qwen3-architecture GGUF models of any shape with random weights
//! and a working tokenizer, and of LoRA adapters for them, for tests and
//! benchmarks that need no download.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

mod adapter;
mod backend;
mod batch;
mod chat;
mod context;
mod device;
mod device_memory;
mod embed;
mod engine;
mod error;
mod ffi;
mod generate;
mod gguf;
mod guidance;
mod hparams;
mod model;
mod modules;
mod quantize;
pub mod rpc;
#[cfg(feature = "rpc-tls")]
pub mod rpc_tls;
mod sampler;
mod state;
#[cfg(feature = "synthetic")]
pub mod synthetic;
mod template;
mod tools;
mod validate;
mod vocab;

pub use adapter::LoraAdapter;
pub use backend::{init, physical_cores, system_info};
pub use batch::{Batch, Pos, SeqId, MAX_POS};
pub use chat::{apply_chat_template, builtin_chat_templates, ChatMessage, ToolCall};
pub use context::{Context, ContextParams, CtxSize, FlashAttention, KvType, PerfContext, DEFAULT_N_CTX};
pub use device::{default_gpus, devices, Device, DeviceKind};
pub use device_memory::{
    all_reduce_for, all_reduce_reserve, fit, per_device, plan_memory, AllReduce, BufferMemory, DeviceMemory, Fit,
    FitParams, INTERNAL_ALL_REDUCE_RESERVE, NCCL_RESERVE,
};
pub use embed::{EmbedParams, Embedder, Normalize, Pooling};
pub use engine::{
    Completion, Engine, EngineParams, EngineStatus, Event, Finished, Logprobs, Request, RequestHandle, RequestStats,
    SamplingParams, StreamPiece,
};
pub use error::{Error, Result};
pub use generate::{GenerateParams, Generation, GenerationStats, Piece, Prompt, StopReason};
pub use guidance::Structured;
pub use hparams::supported_architectures;
pub use model::{KvOverride, LoadMode, Model, ModelParams, SplitMode};
pub use modules::{backend_modules, load_backend_dir, load_backend_module, pin_stamp, BackendModule};
pub use quantize::{quantize, Ftype, QuantizeParams};
pub use sampler::{PerfSampler, Sampler, SamplerBuilder, MAX_PENALTY_LAST_N, RANDOM_SEED};
pub use state::SeqState;
pub use template::{ChatOptions, ChatTemplate};
pub use tools::{ParsedReply, Tool, ToolCallFormat, ToolChoice};
pub use vocab::{AddSpecial, ParseSpecial, RemoveSpecial, RenderSpecial, Token, Vocab, VocabType};

/// The raw FFI crate, for what the safe API does not cover yet.
pub use llama_sys as sys;

/// The README's Rust examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
