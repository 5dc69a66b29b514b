"""Model converters: export trained models into a Triton repository after a parity check."""
