pub use llama_sys as sys;
