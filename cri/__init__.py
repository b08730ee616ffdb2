"""pycri: a Kubernetes CRI runtime."""
