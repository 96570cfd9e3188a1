"""Model side of autofocus-trt: network, labels, losses, data, training."""
