"""drn.apps: the `drn` command (cli) and the user jobs it runs: predict (classify, segment, localize images),
evaluate (accuracy on a dataset), export (ONNX), weights (the released checkpoints), the multi-scale protocol
(multiscale), image and dataset reading (data), label colours and drawing (palette), and what the commands share
(commands). The apps build on drn.zoo, drn.fused and drn.tools; nothing below imports them."""
