"""Model loading: registry, tokenizer, checkpoint sources and conversions."""
