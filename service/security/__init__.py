"""Who may call what, and how much: API keys, scopes, Triton's restricted APIs, per-key rate
limits, the audit log, and the admission that ties them together."""
