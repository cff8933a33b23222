"""x86_64 system call numbers and the kernel constants the pod's filter uses.

The filter is built for one architecture only (the filter kills a process
that enters the kernel through another ABI), so the numbers are a plain table
rather than a dependency on libseccomp's resolver. tests/pods/test_seccomp_filter.py
checks every entry against the kernel headers of the machine it runs on.
Calls newer than those headers (open_tree_attr, ...) are listed with the
number of the kernel release that added them.
"""

from __future__ import annotations

NR = {
    # modules, kexec, reboot
    "init_module": 175, "finit_module": 313, "delete_module": 176,
    "create_module": 174, "query_module": 178, "get_kernel_syms": 177,
    "kexec_load": 246, "kexec_file_load": 320, "reboot": 169,
    # clock
    "settimeofday": 164, "clock_settime": 227, "clock_adjtime": 305, "adjtimex": 159,
    # swap, quota, accounting
    "swapon": 167, "swapoff": 168, "quotactl": 179, "quotactl_fd": 443, "acct": 163,
    # file handles
    "open_by_handle_at": 304, "name_to_handle_at": 303,
    # kernel programs, tracing, logs
    "bpf": 321, "perf_event_open": 298, "lookup_dcookie": 212, "syslog": 103,
    # io_uring
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    # keyrings
    "keyctl": 250, "add_key": 248, "request_key": 249,
    "userfaultfd": 323,
    # mounts: the classic calls, the new mount API, pivot_root
    "mount": 165, "umount2": 166,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "open_tree": 428, "move_mount": 429, "mount_setattr": 442, "open_tree_attr": 467,
    "pivot_root": 155,
    # raw I/O, CPU emulation
    "iopl": 172, "ioperm": 173, "modify_ldt": 154,
    # obsolete or never implemented on x86_64
    "nfsservctl": 180, "uselib": 134, "ustat": 136, "sysfs": 139, "_sysctl": 156,
    "afs_syscall": 183, "tuxcall": 184, "security": 185, "vserver": 236,
    "getpmsg": 181, "putpmsg": 182, "vhangup": 153,
    # calls with argument checks in the filter
    "clone": 56, "clone3": 435, "unshare": 272, "personality": 135,
    "mknod": 133, "mknodat": 259, "socket": 41, "socketpair": 53, "fcntl": 72, "ioctl": 16,
    "bind": 49,
    "prctl": 157, "alarm": 37, "setitimer": 38,
    # processes (mediated)
    "kill": 62, "tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129,
    "rt_tgsigqueueinfo": 297, "pidfd_open": 434, "pidfd_send_signal": 424,
    "pidfd_getfd": 438, "process_madvise": 440, "ptrace": 101,
    "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
    "prlimit64": 302, "setpriority": 141, "sched_setaffinity": 203,
    "sched_setscheduler": 144, "sched_setparam": 142, "sched_setattr": 314,
    "ioprio_set": 251, "migrate_pages": 256, "move_pages": 279,
    "get_robust_list": 274,
}

NAME = {v: k for k, v in NR.items()}

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000

# clone/unshare flags
CLONE_FILES = 0x00000400
CLONE_THREAD = 0x00010000
CLONE_NEWUSER = 0x10000000

# personality values that only select the Linux ABI or uname's version
# (PER_LINUX, PER_LINUX32, UNAME26 and their union) and the query 0xffffffff.
SAFE_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

S_IFMT = 0o170000
S_IFCHR = 0o020000
S_IFBLK = 0o060000

AF_UNIX = 1
AF_INET = 2
AF_INET6 = 10
AF_NETLINK = 16
SOCK_SEQPACKET = 5
IPPROTO_SCTP = 132

F_SETOWN = 8
PR_SET_PDEATHSIG = 1
F_SETOWN_EX = 15
F_SETSIG = 10
FIOSETOWN = 0x8901
SIOCSPGRP = 0x8902
TIOCSTI = 0x5412
TIOCLINUX = 0x541C

PRIO_PROCESS, PRIO_PGRP, PRIO_USER = 0, 1, 2
IOPRIO_WHO_PROCESS, IOPRIO_WHO_PGRP, IOPRIO_WHO_USER = 1, 2, 3
PTRACE_TRACEME = 0
