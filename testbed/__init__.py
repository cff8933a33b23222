"""Stand-ins shared by the tests and the benchmarks; neither product nor tests.

Not shipped (pyproject.toml's packages leave it out) and never imported by
kernel/, rules/, peafs/ or pods/. It lives apart from tests/ so that a
benchmark need not import the tests package, and apart from bench/ so that
the tests need not import the benchmarks (and bench/__main__.py does not
list it as a benchmark).

- seccomp_harness: a stand-in pod (user, pid and net namespaces, the pod's
  seccomp filter, the supervisor, the peas' network programs) without the pod
  daemon or PeaFS.
"""
