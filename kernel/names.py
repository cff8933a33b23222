"""The names a pod and its peas are given, and the prefix of their cgroups.

A pod's name and its peas' names become path components the kernel is
handed: $PEAPOD_RUN/pods/NAME, the cgroups <hierarchy>/peapod/POD/PEA, and
the veth's name is derived from it. The rule keeps them one component each
("/" and ".." cannot be written) and short.
"""

from __future__ import annotations

import re

# A lower-case letter, then up to 30 lower-case letters, digits or "-".
# \Z, not $: "$" also matches before a final newline, which would let
# "name\n" through as a path component.
NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,30}\Z")

# Every pod's cgroups live under this directory of each hierarchy
# (cgroup2 for the peas, cgroup2 or v1 for the limits): one place to find,
# kill and remove all of them.
CGROUP_PREFIX = "peapod"

