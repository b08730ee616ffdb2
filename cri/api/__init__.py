"""The CRI API: stubs generated from the vendored upstream proto (see v1/api.proto, `make stubs`)."""
