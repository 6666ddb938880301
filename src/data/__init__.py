"""Tokenizer, text sources, tokenized cache and training batches.

    tokenizer.py           byte-level BPE: train, save (atomic, AutoTokenizer-ready), load, hash
    tokenizer_training.py  train a tokenizer on a text source
    cli.py                 train_custom_tokenizer.py's flags and main
    sources.py             name the text: HF dataset, .txt / .jsonl / .json, folders, globs
    cache.py               stories -> flat uint16/uint32 token memmap, keyed by tokenizer + source
    batches.py             shuffled resumable rank-sharded training windows, validation windows, bpb
"""
