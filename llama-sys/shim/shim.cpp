// See shim.h. Each wrapper catches everything: no exception may cross into Rust.
#include "shim.h"

#include "llama-ext.h"
#include "llama-model.h"

#include <cstdio>
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

int llama_rs_adapter_lora_init(llama_model * model, const char * path_lora, llama_adapter_lora ** out) {
    return guarded([&] { *out = llama_adapter_lora_init(model, path_lora); });
}

} // extern "C"

extern "C" int llama_rs_model_pooling_info(const llama_model * model, llama_rs_pooling_info * out) {
    return guarded([&] {
        const llama_hparams & hp = model->hparams;
        out->pooling_type   = (int32_t) hp.pooling_type;
        out->has_classifier = model->cls != nullptr || model->cls_out != nullptr;
        out->n_cls_out      = hp.n_cls_out;
        // llama-graph.cpp build_pooling (RANK): cls, then cls.output, each a
        // matrix product; the extraction then copies n_cls_out values per
        // sequence out of this width (llama-context.cpp, LLAMA_POOLING_TYPE_RANK).
        out->rank_width = model->cls_out != nullptr ? model->cls_out->ne[1]
                        : model->cls     != nullptr ? model->cls->ne[1]
                        : 0;
        out->rank_mean = hp.pooling_type_cls == LLAMA_POOLING_TYPE_MEAN;
    });
}

extern "C" int llama_rs_model_tensor_info(const llama_model * model, const char * name, bool * found, int64_t * ne,
                                          int32_t * type) {
    return guarded([&] {
        const ggml_tensor * t = model->get_tensor(name);
        *found = t != nullptr;
        if (t != nullptr) {
            for (int i = 0; i < 4; i++) {
                ne[i] = t->ne[i];
            }
            *type = (int32_t) t->type;
        }
    });
}

extern "C" int llama_rs_model_check(const llama_model * model, char * why, size_t cap) {
    int found = 0;
    const int status = guarded([&] {
        const llama_hparams & hp = model->hparams;
        const std::string arch = llm_arch_name(model->arch);
        // The first finding, with "<arch>" spelled out.
        auto fail = [&](std::string msg) {
            for (size_t at = msg.find("<arch>"); at != std::string::npos; at = msg.find("<arch>", at)) {
                msg.replace(at, 6, arch);
            }
            if (!found && cap > 0) {
                std::snprintf(why, cap, "%s", msg.c_str());
            }
            found = 1;
        };
        // llama-model.cpp:2823 / 2873: a sliding-window architecture needs
        // some SWA layer (an all-dense pattern such as sliding_window_pattern
        // = 1), and one without SWA must have none.
        if (hp.swa_type != LLAMA_SWA_TYPE_NONE && !hp.is_swa_any()) {
            fail("the architecture uses a sliding window but no layer is a sliding-window layer "
                 "(<arch>.attention.sliding_window_pattern); llama.cpp asserts at context creation");
        } else if (hp.swa_type == LLAMA_SWA_TYPE_NONE && hp.is_swa_any()) {
            fail("sliding-window layers (<arch>.attention.sliding_window_pattern) on a model without a sliding "
                 "window; llama.cpp asserts at context creation");
        }
        // ggml-cpu/ops.cpp:6452: with zero rotated dimensions the rope
        // kernel's copy loop (`i0 += n_dims - 2`) never ends: a hang at the
        // first decode, for every architecture that applies RoPE.
        if (hp.rope_type != LLAMA_ROPE_TYPE_NONE) {
            for (uint32_t il = 0; il < hp.n_layer(); ++il) {
                if (hp.n_rot(il) == 0) {
                    fail("<arch>.rope.dimension_count = 0 (layer " + std::to_string(il) +
                         "): the architecture applies RoPE, and ggml's rope kernel loops forever on zero rotated "
                         "dimensions");
                    break;
                }
            }
        }
        // ggml-cpu/ops.cpp:6231 and 6381: M-RoPE sections, non-negative,
        // not all zero, summing to at most the head size.
        if (hp.rope_type != LLAMA_ROPE_TYPE_NONE && (hp.rope_type & LLAMA_ROPE_TYPE_MROPE)) {
            const auto & s = hp.rope_sections;
            const long sum = (long) s[0] + s[1] + s[2] + s[3];
            const bool negative = s[0] < 0 || s[1] < 0 || s[2] < 0 || s[3] < 0;
            if (negative || (s[0] <= 0 && s[1] <= 0 && s[2] <= 0) || sum > (long) hp.n_embd_head_k()) {
                fail("<arch>.rope.dimension_sections = [" + std::to_string(s[0]) + ", " + std::to_string(s[1]) +
                     ", " + std::to_string(s[2]) + ", " + std::to_string(s[3]) +
                     "]: each must be >= 0, one of the first three > 0, and the sum at most the head size " +
                     std::to_string(hp.n_embd_head_k()) + "; ggml's rope kernel asserts at the first decode");
            }
        }
        // models/mamba-base.cpp:177-178: Mamba-2 layers split d_inner into
        // dt_rank heads and n_group groups.
        const bool mamba2 = model->arch == LLM_ARCH_MAMBA2 || model->arch == LLM_ARCH_FALCON_H1 ||
                            model->arch == LLM_ARCH_GRANITE_HYBRID || model->arch == LLM_ARCH_NEMOTRON_H ||
                            model->arch == LLM_ARCH_NEMOTRON_H_MOE;
        if (mamba2 && (hp.ssm_dt_rank == 0 || hp.ssm_d_inner % hp.ssm_dt_rank != 0 ||
                       (hp.ssm_n_group != 0 && hp.ssm_d_inner % hp.ssm_n_group != 0))) {
            fail("<arch>.ssm.inner_size = " + std::to_string(hp.ssm_d_inner) +
                 " must be a multiple of ssm.time_step_rank = " + std::to_string(hp.ssm_dt_rank) +
                 " and of ssm.group_count = " + std::to_string(hp.ssm_n_group) +
                 "; the Mamba-2 graph asserts it at context creation");
        }
        // models/rwkv6-base.cpp:111: n_head (n_embd / wkv.head_size) must be
        // a multiple of every layer's head_count_kv.
        if ((model->arch == LLM_ARCH_RWKV6 || model->arch == LLM_ARCH_RWKV6QWEN2) && hp.wkv_head_size > 0) {
            const uint32_t n_head = hp.n_embd / hp.wkv_head_size;
            for (uint32_t il = 0; il < hp.n_layer(); ++il) {
                const uint32_t kv = hp.n_head_kv(il);
                if (kv != 0 && kv != n_head && (kv > n_head || n_head % kv != 0)) {
                    fail("layer " + std::to_string(il) + ": attention.head_count_kv = " + std::to_string(kv) +
                         " does not divide n_embd / wkv.head_size = " + std::to_string(n_head) +
                         "; the RWKV6 graph asserts it");
                    break;
                }
            }
        }
    });
    return status != 0 ? -1 : found;
}
