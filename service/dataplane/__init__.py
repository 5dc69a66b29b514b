"""The data plane every front end calls (resolve, text to tokens, validate, admit, cache,
schedule), the dynamic batcher and shedding by predicted wait."""
