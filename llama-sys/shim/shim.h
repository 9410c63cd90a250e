/* llama-rs exception shim.
 *
 * Every llama.cpp C API call that can throw a C++ exception is wrapped here in
 * a noexcept function with a try/catch. Each returns 0 when the call completed
 * (its own result is written through the last pointer) and -1 when it threw;
 * the exception's message is then in llama_rs_last_error() (per thread). */
#pragma once

#include "llama.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Message of the last exception caught on this thread ("" if none). */
const char * llama_rs_last_error(void);

int llama_rs_model_load_from_file(const char * path, struct llama_model_params params,
                                  struct llama_model ** out);
int llama_rs_init_from_model(struct llama_model * model, struct llama_context_params params,
                             struct llama_context ** out);
int llama_rs_decode(struct llama_context * ctx, struct llama_batch batch, int32_t * ret);
int llama_rs_encode(struct llama_context * ctx, struct llama_batch batch, int32_t * ret);

int llama_rs_tokenize(const struct llama_vocab * vocab, const char * text, int32_t text_len,
                      llama_token * tokens, int32_t n_tokens_max, bool add_special,
                      bool parse_special, int32_t * ret);
int llama_rs_token_to_piece(const struct llama_vocab * vocab, llama_token token, char * buf,
                            int32_t length, int32_t lstrip, bool special, int32_t * ret);
int llama_rs_detokenize(const struct llama_vocab * vocab, const llama_token * tokens,
                        int32_t n_tokens, char * text, int32_t text_len_max, bool remove_special,
                        bool unparse_special, int32_t * ret);

int llama_rs_sampler_init_grammar(const struct llama_vocab * vocab, const char * grammar_str,
                                  const char * grammar_root, struct llama_sampler ** out);
int llama_rs_sampler_init_grammar_lazy_patterns(const struct llama_vocab * vocab,
                                                const char * grammar_str, const char * grammar_root,
                                                const char ** trigger_patterns,
                                                size_t num_trigger_patterns,
                                                const llama_token * trigger_tokens,
                                                size_t num_trigger_tokens,
                                                struct llama_sampler ** out);
int llama_rs_sampler_init_dry(const struct llama_vocab * vocab, float dry_multiplier, float dry_base, int32_t dry_allowed_length,
                              int32_t dry_penalty_last_n, const char ** seq_breakers,
                              size_t num_breakers, struct llama_sampler ** out);
int llama_rs_sampler_accept(struct llama_sampler * smpl, llama_token token);
int llama_rs_sampler_apply(struct llama_sampler * smpl, llama_token_data_array * cur_p);
int llama_rs_sampler_sample(struct llama_sampler * smpl, struct llama_context * ctx, int32_t idx,
                            llama_token * out);
int llama_rs_sampler_reset(struct llama_sampler * smpl);

int llama_rs_chat_apply_template(const char * tmpl, const struct llama_chat_message * chat,
                                 size_t n_msg, bool add_ass, char * buf, int32_t length,
                                 int32_t * ret);
int llama_rs_model_quantize(const char * fname_inp, const char * fname_out,
                            const llama_model_quantize_params * params, uint32_t * ret);

/* Bytes one buffer type holds for a context: weights, KV cache/state, compute. */
typedef struct llama_rs_memory_entry {
    ggml_backend_buffer_type_t buft;
    size_t model;
    size_t context;
    size_t compute;
} llama_rs_memory_entry;

/* llama_get_memory_breakdown (C++ only in llama-ext.h) as a C array: fills
 * at most `cap` entries and writes the total count to *n (call again with a
 * larger array when *n > cap). */
int llama_rs_memory_breakdown(const struct llama_context * ctx, llama_rs_memory_entry * out, size_t cap,
                              size_t * n);

/* Checks a loaded model's hyperparameters, as llama.cpp computed them, for
 * the combinations that its context creation or graph builders assert on,
 * or that make a kernel loop forever
 * (the metadata validator cannot see them: they depend on per-architecture
 * defaults and derived values). Returns 0 when none applies, else 1 with a
 * NUL-terminated reason in `why` (at most `cap` bytes); -1 if it threw. */
int llama_rs_model_check(const struct llama_model * model, char * why, size_t cap);

/* A loaded model's pooling and classifier head, as llama.cpp loaded them. */
typedef struct llama_rs_pooling_info {
    int32_t  pooling_type;   /* the model's default (hparams.pooling_type); -1: unspecified */
    bool     has_classifier; /* a classifier head (cls.weight or cls.output.weight) was loaded */
    uint32_t n_cls_out;      /* values per sequence rank pooling copies out (hparams.n_cls_out) */
    int64_t  rank_width;     /* values per sequence the rank-pooling head computes; 0 without a head */
    bool     rank_mean;      /* rank pooling averages the tokens before the head (classifier.pooling_type mean) */
} llama_rs_pooling_info;

int llama_rs_model_pooling_info(const struct llama_model * model, llama_rs_pooling_info * out);

/* Shape (ne[0..4]) and ggml type of the model tensor `name`: *found is false
 * when the model has no such tensor. */
int llama_rs_model_tensor_info(const struct llama_model * model, const char * name, bool * found,
                               int64_t * ne, int32_t * type);

/* llama_adapter_lora_init: catches what escapes its own try/catch (the
 * adapter's allocation). */
int llama_rs_adapter_lora_init(struct llama_model * model, const char * path_lora,
                               struct llama_adapter_lora ** out);

#ifdef __cplusplus
}
#endif
