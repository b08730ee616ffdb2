"""Host operating-system calls shared by every room: libc, mountinfo, atomic files, cgroups.

cri/, storage/ and netplugins/ all import from here, so this package imports none of them. It raises OSError,
ValueError and a few classes of its own (messages a person can act on); callers turn them into their own errors.
"""
