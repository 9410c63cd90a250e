/* The one header bindgen reads: the public llama.cpp/ggml API and our shim. */
#include "llama.h"
#include "ggml.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "gguf.h"
#include "shim.h"
