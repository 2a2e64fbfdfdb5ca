"""Running generations on a llama context: the scheduler, its jobs' pipelines, prefix reuse,
the KV pool, the prompt cache, sampling, grammars, text and the llama.cpp calls."""
