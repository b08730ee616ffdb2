"""The admin socket: a root-only unix socket beside the CRI socket through which the `pycri` command reads
the running daemon (images, pods, containers, one object in full, the start timeline) and imports images
into it while it runs, as `ctr images import` does for containerd.

Protocol: the client sends one JSON line, {"op": NAME, ...arguments}; `import` then streams the archive
(a tarball) until it shuts its side down. The daemon answers with one JSON line, {"ok": true, "result": ...}
or {"ok": false, "error": MESSAGE}.
"""
