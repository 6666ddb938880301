"""Evaluation: held-out perplexity and bits per byte, and scores of generated stories.

Every score here measures what the model wrote (never the prompt, never the post-processing
alone), and every score can go down when the model gets worse.
"""
