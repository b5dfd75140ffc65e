"""pytest-benchmark suites for drn-kernels (layers and models), the report script and the GPU check driver."""
