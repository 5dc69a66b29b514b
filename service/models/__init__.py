"""Model versions derived from their config.pbtxt, the repository that owns their lifecycle, the
sources that create them, and tokenizers."""
