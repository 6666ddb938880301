"""Tokenizer, text sources, tokenized cache and training batches."""
