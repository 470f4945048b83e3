"""LLM engines and the local model cache."""
