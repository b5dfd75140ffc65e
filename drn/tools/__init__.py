"""drn.tools: performance tooling: FLOP and byte counts and the roofline (flops), the per-layer profiler
(profile; `python -m drn.profile`, `drn profile`). Builds on drn.zoo and drn.fused."""
