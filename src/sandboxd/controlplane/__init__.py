"""The control plane: public v1beta2 API, runner registry and scheduling."""
