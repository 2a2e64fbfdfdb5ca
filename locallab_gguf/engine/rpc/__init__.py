"""llama.cpp's RPC backend: a model's layers on other machines' devices.

`protocol` speaks the first messages of ggml-rpc's wire protocol from Python (the handshake,
the device count, each device's memory), so the server can plan a load and refuse an
unreachable or incompatible worker before llama.cpp, which aborts the process on either, is
asked to connect. `native` binds the library's own functions: registering a worker's devices
for a model load, and serving this machine's devices (`locallab-gguf rpc-worker`).
"""
