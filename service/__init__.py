"""recsmith: product recommendations with a language model."""
