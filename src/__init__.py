"""TinyStories small-LM toolkit: model, data, training, generation, evaluation, server."""
