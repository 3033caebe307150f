"""Training: what needs TensorFlow to make, evaluate and ship a model (never loaded by a worker)."""
