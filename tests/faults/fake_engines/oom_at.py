"""`oom_at.py CTX ARGS...`: the real llama.cpp server, except at `--n_ctx CTX`, where it prints
what llama.cpp prints when CUDA runs out of memory and exits at once with code 1.

Configured as `engines.llamacpp.command: [python, oom_at.py, CTX]`.
"""

import os
import sys

OOM_LINES = (
    "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 16384.00 MiB on device 0: "
    "cudaMalloc failed: out of memory",
    "llama_kv_cache_init: failed to allocate buffer for kv cache",
    "llama_init_from_model: failed to initialize the context: failed to allocate buffer for kv cache",
)


def main() -> None:
    fail_ctx, args = sys.argv[1], sys.argv[2:]
    if args[args.index("--n_ctx") + 1] == fail_ctx:
        for line in OOM_LINES:
            print(line, file=sys.stderr, flush=True)
        sys.exit(1)
    os.execv(sys.executable, [sys.executable, "-m", "llama_cpp.server", *args])


if __name__ == "__main__":
    main()
