"""Facts about the running Linux kernel that peafs and pods both rely on.

Below rules, peafs and pods, and importing none of them: the parsing of
/proc/PID/status (procfs), the system calls Python lacks (libc), user
namespace id maps (idmap), and the names the kernel is given for a pod
(names). Each fact has one owner here; nothing is imported by this file, so
``from kernel import names`` loads no ctypes.
"""
