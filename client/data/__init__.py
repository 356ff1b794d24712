"""The node's data: dataset loaders (one per format), partitions, tensors, fixed features."""
