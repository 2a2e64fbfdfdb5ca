"""The only package that imports llama_cpp: model, context, batching, sampling, text.

Importing the package imports nothing: `types` (the seam) and `client` (the protocol) load
without llama.cpp, so the HTTP layer can use them in a process that never loads the library.
"""
