// config.json (+ generation_config.json) of a Llama 3.x or Mixtral model directory.
#pragma once
#include "base/common.h"

#define CONFIG_MAX_EOS 16

typedef struct {
    int is_mixtral;               // model_type "mixtral": MoE FFNs in the checkpoint
    int hidden_size;
    int intermediate_size;        // per expert for Mixtral
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;                 // head_dim if given, else hidden_size / n_heads
    int vocab_size;
    int max_position_embeddings;
    float rms_norm_eps;
    float rope_theta;
    int rope_llama3;              // rope_scaling.rope_type == "llama3"
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_position;
    int tie_word_embeddings;
    int bos_id;                   // -1 if absent
    int eos_ids[CONFIG_MAX_EOS];  // union of config.json and generation_config.json
    int n_eos;
    int n_experts;                // Mixtral: num_local_experts; else 0
    int n_experts_per_tok;        // Mixtral: num_experts_per_tok; else 0
} llama_config;

// Reads DIR/config.json and, if present, DIR/generation_config.json. Every missing or
// out-of-range field is an error naming the file and the field.
int config_load(llama_config *c, const char *dir, llamoe_err *err);
// Parses config.json text (the fuzzer's entry point). path is only used in messages.
int config_parse(llama_config *c, const char *path, const char *json_text, llamoe_err *err);
// Adds eos ids from generation_config.json text (int or list).
int config_parse_generation(llama_config *c, const char *path, const char *json_text, llamoe_err *err);

int config_is_eos(const llama_config *c, int token);
