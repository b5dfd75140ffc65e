"""How drn_kernels' compiled libraries are built and loaded; nothing here computes an op.

    config        sources, compiler flags, CUDA toolkit discovery (torch-free: setup.py reads it by path)
    lock          one build at a time per build folder (an flock)
    extension     loading drn_kernels._C: setup.py's in-place build, else the build on first use
    sim           the "cuda-sim" backend's library: the CUDA kernel sources built for the host (csrc/sim)
    cuda_cubins   the CUDA kernels' resources read from their cubins (the CUDA half of drn_kernels.aot)
    testing       the test library: test-only ops (torch.ops.drn_testing.*), built only when a test asks
    cli           `python -m drn_kernels.build`

Imports point one way: the op core (drn_kernels._backends, cpu_choices, ...) imports this package to load a library
or ask why one is missing; this package imports nothing of drn_kernels but drn_kernels.settings.
"""
