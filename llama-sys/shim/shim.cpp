// See shim.h. Each wrapper catches everything: no exception may cross into Rust.
#include "shim.h"

#include "llama-ext.h"

#include <exception>
#include <regex>
#include <string>

namespace {

thread_local std::string last_error;

template <typename F> int guarded(F && f) noexcept {
    try {
        last_error.clear();
        f();
        return 0;
    } catch (const std::exception & e) {
        try {
            last_error = e.what();
        } catch (...) {
        }
    } catch (...) {
        try {
            last_error = "unknown C++ exception";
        } catch (...) {
        }
    }
    return -1;
}

} // namespace

extern "C" {

const char * llama_rs_last_error(void) {
    return last_error.c_str();
}

int llama_rs_model_load_from_file(const char * path, llama_model_params params, llama_model ** out) {
    return guarded([&] { *out = llama_model_load_from_file(path, params); });
}

int llama_rs_init_from_model(llama_model * model, llama_context_params params, llama_context ** out) {
    return guarded([&] { *out = llama_init_from_model(model, params); });
}

int llama_rs_decode(llama_context * ctx, llama_batch batch, int32_t * ret) {
    return guarded([&] { *ret = llama_decode(ctx, batch); });
}

int llama_rs_encode(llama_context * ctx, llama_batch batch, int32_t * ret) {
    return guarded([&] { *ret = llama_encode(ctx, batch); });
}

int llama_rs_tokenize(const llama_vocab * vocab, const char * text, int32_t text_len, llama_token * tokens,
                      int32_t n_tokens_max, bool add_special, bool parse_special, int32_t * ret) {
    return guarded([&] {
        *ret = llama_tokenize(vocab, text, text_len, tokens, n_tokens_max, add_special, parse_special);
    });
}

int llama_rs_token_to_piece(const llama_vocab * vocab, llama_token token, char * buf, int32_t length,
                            int32_t lstrip, bool special, int32_t * ret) {
    return guarded([&] { *ret = llama_token_to_piece(vocab, token, buf, length, lstrip, special); });
}

int llama_rs_detokenize(const llama_vocab * vocab, const llama_token * tokens, int32_t n_tokens, char * text,
                        int32_t text_len_max, bool remove_special, bool unparse_special, int32_t * ret) {
    return guarded([&] {
        *ret = llama_detokenize(vocab, tokens, n_tokens, text, text_len_max, remove_special, unparse_special);
    });
}

int llama_rs_sampler_init_grammar(const llama_vocab * vocab, const char * grammar_str, const char * grammar_root,
                                  llama_sampler ** out) {
    return guarded([&] { *out = llama_sampler_init_grammar(vocab, grammar_str, grammar_root); });
}

int llama_rs_sampler_init_grammar_lazy_patterns(const llama_vocab * vocab, const char * grammar_str,
                                                const char * grammar_root, const char ** trigger_patterns,
                                                size_t num_trigger_patterns, const llama_token * trigger_tokens,
                                                size_t num_trigger_tokens, llama_sampler ** out) {
    return guarded([&] {
        // llama.cpp allocates the sampler's state, then compiles each pattern
        // (std::regex, ECMAScript, as here): a bad one throws and that state
        // leaks (80 bytes; LeakSanitizer, docs/sanitizers.md). Compile them
        // here first, so that a bad pattern throws before anything is allocated.
        for (size_t i = 0; i < num_trigger_patterns && trigger_patterns != nullptr; i++) {
            std::regex check(trigger_patterns[i]);
        }
        *out = llama_sampler_init_grammar_lazy_patterns(vocab, grammar_str, grammar_root, trigger_patterns,
                                                        num_trigger_patterns, trigger_tokens, num_trigger_tokens);
    });
}

int llama_rs_sampler_init_dry(const llama_vocab * vocab, float dry_multiplier, float dry_base,
                              int32_t dry_allowed_length, int32_t dry_penalty_last_n, const char ** seq_breakers,
                              size_t num_breakers, llama_sampler ** out) {
    return guarded([&] {
        *out = llama_sampler_init_dry(vocab, dry_multiplier, dry_base, dry_allowed_length,
                                      dry_penalty_last_n, seq_breakers, num_breakers);
    });
}

int llama_rs_sampler_accept(llama_sampler * smpl, llama_token token) {
    return guarded([&] { llama_sampler_accept(smpl, token); });
}

int llama_rs_sampler_apply(llama_sampler * smpl, llama_token_data_array * cur_p) {
    return guarded([&] { llama_sampler_apply(smpl, cur_p); });
}

int llama_rs_sampler_sample(llama_sampler * smpl, llama_context * ctx, int32_t idx, llama_token * out) {
    return guarded([&] { *out = llama_sampler_sample(smpl, ctx, idx); });
}

int llama_rs_sampler_reset(llama_sampler * smpl) {
    return guarded([&] { llama_sampler_reset(smpl); });
}

int llama_rs_chat_apply_template(const char * tmpl, const llama_chat_message * chat, size_t n_msg, bool add_ass,
                                 char * buf, int32_t length, int32_t * ret) {
    return guarded([&] { *ret = llama_chat_apply_template(tmpl, chat, n_msg, add_ass, buf, length); });
}

int llama_rs_model_quantize(const char * fname_inp, const char * fname_out,
                            const llama_model_quantize_params * params, uint32_t * ret) {
    return guarded([&] { *ret = llama_model_quantize(fname_inp, fname_out, params); });
}

int llama_rs_memory_breakdown(const llama_context * ctx, llama_rs_memory_entry * out, size_t cap, size_t * n) {
    return guarded([&] {
        const llama_memory_breakdown mb = llama_get_memory_breakdown(ctx);
        size_t i = 0;
        for (const auto & [buft, data] : mb) {
            if (i < cap) {
                out[i] = { buft, data.model, data.context, data.compute };
            }
            i++;
        }
        *n = i;
    });
}

} // extern "C"
