"""The committed Triton launch configs (drn_kernels.triton.config_table reads them; nothing else should).

One row per (kernel, key, dtype, arch): "key" is the autotuner's key arguments plus the kernel's constexpr flags,
"config" the BLOCK_* meta-parameters with num_warps and num_stages, "ms" the median the search measured for it
and "device" the GPU it was measured on. Rows come only from measurements: the device check writes the winners
of its searches to triton_configs-<device>.json in its output folder, and

    python -m drn_kernels.triton.config_table triton_configs-<device>.json > table.txt

prints this literal with them merged in. Until a GPU run has filled it, the table is empty and every key is
found by the time-capped search (config_table.SEARCH_CAP_S).
"""
TABLE = [
]
