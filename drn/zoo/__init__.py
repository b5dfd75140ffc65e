"""drn.zoo: the Dilated Residual Networks exact to the reference implementation (fyu/drn) and everything that gets
weights into them: the architectures (models), the names and released weights (registry), the task heads (heads),
checkpoint loading (checkpoint), the download cache (hub), listing and importing checkpoint files (weights) and the
unfused build (factory). It imports nothing else of drn: the fused assembly (drn.fused) builds on it."""
