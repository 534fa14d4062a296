"""The bases that method families share, one module per family: `search` (hard-prompt searches and the
budget check), `llm` (LLM-driven optimisers), `soft` (gradient-trained prompts in the input-embedding
space) and `clip` (CLIP prompt learning). A concrete method subclasses one of them in `methods/`."""
