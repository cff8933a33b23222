"""The privileged start of a pod, and of a process in a pod, in order.

Read this file from top to bottom: that is the order in which the steps run,
whichever process runs them. Each step says what it prevents. The processes
are those of pods/daemon.py, pods/init.py and pods/tagger.py, which only
parse their arguments and call the steps here (and, once started, serve,
reap or relay):

    daemon   the pod's daemon (pods/daemon.py): host root, on the host, for the
             pod's whole life
    keeper   ``pods.init``, fork+exec'd by the daemon: unshares the pod's
             namespaces and stays outside its pid namespace
    pid 1    the keeper's child: the pod's first process (pods/init.py then
             reaps orphans in it)
    tagger   ``pods.tagger``, the pod's fork server: fork+exec'd by the daemon
             when the pod starts (and again if it dies), single-threaded, with
             this module and the filter ready; on the host, outside every pod
             namespace; forks one monitor per pod process and reaps it
    monitor  the tagger's child, one per pod process: stays on the host,
             outside every pod namespace, and relays once CMD runs
    child    the monitor's child: walks into the pod and becomes the command

A. A pod (`pod start`)
    A1 daemon   host_setup       own mount namespace, cgroups, host mounts, PeaFS
    A2 daemon   spawn_keeper, spawn_tagger (the tagger starts up meanwhile: A8)
    A3 keeper   keeper_unshare   death signal, cgroups, net alone, the other
                                 namespaces, root held, host name   -> "unshared"
    A4 daemon   configure_pod    id maps, default pea, veth, network rules -> "go"
    A5 keeper   keeper_fork_pid1 pod root, not dumpable, fork        -> "init" PID
    A6 pid 1    pid1_enter_root  /proc, /dev, pivot_root             -> "ready"
    A7 daemon   hold_pid1        a pidfd, checked to be pid 1 of the keeper's
                                 pid namespace: the handle on the pod
    A8 tagger   tagger_ready     death signal, the filter programs built -> "ready"
                                 (the daemon waits for it after A7)
    (start_pod drives A2-A8 from the daemon, keeper() from the keeper.)
    The daemon then starts the supervisor, the control socket and the
    policy's services (pods/daemon.py, serve). If the tagger dies, the
    daemon starts another (A2, A8: restart_tagger) before the next request.

B. A process in a pod (`pod exec`, every service)
    B0 tagger   a request from the daemon (pods/daemon.py, run_tagger): argv,
                pea's cgroups, user, tty, and by SCM_RIGHTS the caller's
                stdio, the monitor's control socket, pid 1's pidfd, the
                pea's IPC namespace; fork
       monitor  monitor_descriptors: the request's stdio on 0-2, every other
                descriptor of the tagger closed      -> "monitor" + its pidfd
    B1 monitor  setns(PID) of pid 1's pidfd; fork
    B2 child    not dumpable
    B3 child    the pea's and the limits' cgroups; vm.memfd_noexec = 2
    B4 child    setns(USER|MNT|IPC|UTS|NET|CGROUP); the pea's IPC namespace
    B5 child    setsid; a pty of the pod's devpts                    -> "pty" + fd
    B6 child    CAP_SYS_PTRACE out of the bounding set; the pod user
    B7 child    every descriptor closed but 0-2 and the handshake's; umask 022
    B8 child    seccomp filter                                       -> "seccomp"
       monitor  takes the listener (pidfd_getfd), hands it to the daemon's
                supervisor                                            -> "go"
    B9 child    exec CMD; the handshake socket closes with the exec (CLOEXEC)
    (pods/tagger.py serve drives B0; start_in_pod drives B1-B9 from the
    monitor, which then relays.)

Handshakes: the control protocol's JSON messages and framing
(pods/control.py): one SOCK_SEQPACKET datagram = one object, descriptors by
SCM_RIGHTS. ``{"step": NAME, ...}`` says step NAME is done (with its
results), ``{"error": TEXT, "step": NAME, "errno": N}`` that it failed, and
the sender stops. Each receiver checks that the message is the step it
expects (control.recv_step): an end of stream, bytes that are not a JSON
object, or another step stop the start with an error naming the step, and
nothing stays behind (the daemon's cleanup, or the monitor killing its
child).

Imports: the keeper and the tagger run with ``python -S`` and import this
module, so it imports at the top only what the tagger needs. The tagger
imports it once, when the pod starts: its monitors are forks of it, and a
pod process's start costs no Python start-up. The daemon's steps import
the daemon's modules (trio, PeaFS, cgroups, BPF) inside; the keeper imports
its own (network, root file system) first thing, as host root. Nothing is
imported once a process is pod root or in the pod's mount namespace: the
interpreter's library may be out of their reach (under /root, mode 0700).
The filter module is imported at the top, without a fallback: a pod
process never runs without its filter (fail closed;
tests/pods/test_host_safety.py).
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import struct
import sys
from pathlib import Path

from kernel import jsonline, libc, procfs
from pods import control
from pods import namespaces as ns
from pods import seccomp as _seccomp   # no fallback: see above

# ------------------------------------------------------- starting Python children

# The directory the running code was imported from (a checkout, or the
# site-packages of an installation): the children run this same code.
PKG_ROOT = str(Path(__file__).resolve().parent.parent)

# The children (daemon, keeper, pid 1, tagger, peaipc) run with the
# interpreter that runs us, isolated (-I: no PYTHON* variable, no user site,
# neither the current nor the script's directory on the path), without
# bytecode writes (-B), and with exactly one directory put in front of the
# path on purpose: PKG_ROOT. They import `module` and call its main(),
# which parses sys.argv[1:].
_BOOT = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
         "sys.exit(__import__(sys.argv.pop(1), fromlist=['main']).main())")


def python_command(module: str, *args: str, site: bool = False) -> list[str]:
    """The command line of a Python child running ``module``. ``site``: the
    child needs the installed packages (trio, pyfuse3: the daemon). The
    keeper, pid 1 and the taggers import only the standard library and this
    project, so they skip site (-S: about 20 ms of every `pod exec`, most of
    it an editable install's import hook)."""
    flags = ["-I", "-B"] if site else ["-I", "-B", "-S"]
    return [sys.executable, *flags, "-c", _BOOT, PKG_ROOT, module, *args]


def child_env() -> dict:
    """The environment of every Python child: nothing of the caller's (the
    interpreter is told where this package is by python_command, not by
    the environment)."""
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


class StartError(Exception):
    """A failure to start the pod, reported to `pod start` as one line."""


def _exit_text(status: int | None) -> str:
    if status is None:
        return "still running"
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


def _ended(d, proc, who: str) -> str:
    """Why a start step got no message: ``proc`` (the keeper or the tagger,
    a subprocess.Popen of the daemon ``d``) ended, and how."""
    try:
        status = proc.wait(timeout=2)
    except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired
        status = proc.poll()
    return f"{who} ended ({_exit_text(status)}); see {d.dir / 'daemon.log'}"


# ============================================================================
# A. A pod
# ============================================================================

# -- A1. daemon, host side: before trio (unshare needs a single thread) --------

def needed_paths(d) -> list[str]:
    """Host paths the daemon, PeaFS, the keeper and the taggers use."""
    from pods import runtime

    py = [sys.prefix, sys.base_prefix, sys.exec_prefix,
          os.path.dirname(os.path.realpath(sys.executable))]
    root = d.policy.root
    return [*py, PKG_ROOT, "/usr", "/etc", "/proc", "/sys", "/dev",
            str(d.run.path), str(root), str(runtime.lasting_dir(root)),
            *(str(m.host) for m in d.policy.mounts)]


def host_setup(d) -> None:
    """A1, in the daemon ``d`` (a PodDaemon)."""
    from kernel import cgroup
    from pods import limits, rootfs, runtime, services

    # A1a. A mount namespace of our own, slave of the host's. Prevents: our
    # mounts (the host directories bound into the staging tree, PeaFS)
    # reaching the host; a host unmount still reaches us.
    libc.unshare(libc.CLONE_NEWNS)
    ns.mount(None, "/", None, ns.MS_REC | ns.MS_SLAVE)
    # A1b. Only the mounts we use stay. Prevents: this copy of the host's
    # namespace pinning other programs' mounts until the pod stops (a host
    # umount of them would leave them busy).
    rootfs.detach_unneeded(needed_paths(d))
    # A1c. The pea cgroups and the limit cgroups, before any pod process
    # exists: every later process joins them before it runs pod code.
    try:
        cgroup.ensure_peas(d.name, d.policy.peas)
        limits.setup(d.name, d.policy.limits.memory, d.policy.limits.pids)
    except (cgroup.CgroupError, limits.LimitError, OSError) as e:
        raise StartError(f"cgroups: {getattr(e, 'strerror', None) or e}") from e
    v1 = [str(p / "cgroup.procs") for p in limits.v1_dirs(d.name)]
    for pea in d.policy.peas:
        d.cgroup_files[pea] = [str(cgroup.pea_cgroup(d.name, pea) / "cgroup.procs"), *v1]
    d.cgroup_files[""] = [str(cgroup.pod_cgroup(d.name) / "cgroup.procs"), *v1]
    # A1d. The [[pod.mount]] host directories bound into the staging tree,
    # read-only unless rw, in our namespace only. Prevents: a pod writing a
    # host directory the policy did not give it.
    try:
        rootfs.prepare_staging(d.policy.root, d.policy.mounts)
        rootfs.place_host_mounts(d.policy.root, d.policy.mounts)
    except OSError as e:
        raise StartError(f"staging directory {d.policy.root}: {e.strerror or e}") from e
    d.mnt.mkdir(mode=0o700, exist_ok=True)
    # Link rules, the audit log and the services' log outlive the pod
    # (pods/runtime.py), beside the root: out of every pod process's reach.
    lasting = runtime.lasting_dir(d.policy.root)
    try:
        lasting.mkdir(mode=0o700, exist_ok=True)
        d.service_log = services.ServiceLog(runtime.service_log(lasting))
    except OSError as e:
        raise StartError(f"state directory {lasting}: {e.strerror or e}") from e
    # A1e. PeaFS on $PEAPOD_RUN/pods/NAME/mnt: the pod's root. Prevents:
    # any access of a pod process to its files without its pea's rules.
    from peafs.session import PeaFSSession

    d.session = PeaFSSession(d.policy.root, d.mnt, d.policy, lasting)
    try:
        d.session.mount()
    except Exception as e:  # noqa: BLE001 - reported as a start failure
        raise StartError(f"PeaFS mount on {d.mnt}: "
                         f"{getattr(e, 'strerror', None) or e}") from e


# -- A2. daemon: the keeper ---------------------------------------------------------

def spawn_keeper(d) -> socket.socket:
    """A2: fork+exec of ``pods.init`` (a fresh single-threaded process, which
    unshare(CLONE_NEWUSER) requires). Returns the daemon's end of the
    handshake socket."""
    import subprocess

    from kernel import idmap

    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pts_gid = 5 if idmap.is_mapped(d.policy.gid_map, 5) else -1
    root_uid = 0 if idmap.is_mapped(d.policy.uid_map, 0) else d.policy.uid_map[0].inside
    root_gid = 0 if idmap.is_mapped(d.policy.gid_map, 0) else d.policy.gid_map[0].inside
    args = ["--sync", str(theirs.fileno()), "--daemon-pid", str(os.getpid()),
            "--root", str(d.mnt), "--hostname", d.policy.hostname,
            "--pts-gid", str(pts_gid), "--root-uid", str(root_uid), "--root-gid", str(root_gid)]
    for f in d.cgroup_files[""]:
        args += ["--cgroup", f]
    # From the daemon's main thread, never a worker's: the keeper's
    # PR_SET_PDEATHSIG fires when the thread that forked it ends.
    try:
        d.keeper = subprocess.Popen(python_command("pods.init", *args),
                                    pass_fds=[theirs.fileno()], env=child_env(),
                                    stdin=subprocess.DEVNULL, cwd="/")
    finally:
        theirs.close()
    return mine


def spawn_tagger(d) -> socket.socket:
    """A2, the tagger: fork+exec of ``pods.tagger``, the pod's fork server
    (a fresh single-threaded process: none of the daemon's threads, trio
    state or descriptors). From the daemon's main thread, like the keeper:
    its PR_SET_PDEATHSIG (A8) fires when the thread that forked it ends.
    Sets ``d.tagger`` (the Popen); returns the daemon's end of its socket,
    which carries the handshake, then the requests (B0)."""
    import subprocess

    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        # stdout and stderr: the daemon's (daemon.log), for a traceback.
        d.tagger = subprocess.Popen(
            python_command("pods.tagger", "--sock", str(theirs.fileno()),
                           "--daemon-pid", str(os.getpid())),
            pass_fds=[theirs.fileno()], env=child_env(), stdin=subprocess.DEVNULL, cwd="/")
    finally:
        theirs.close()
    return mine


# -- A3. keeper: the namespaces -------------------------------------------------------

def _join_cgroups(procs_files: list[str]) -> None:
    for path in procs_files:
        with open(path, "w") as f:
            f.write("0\n")  # 0 = the writing process itself


def keeper_unshare(args, sync: socket.socket, state: dict) -> int:
    """A3, in the keeper. Returns an fd of the pod root (O_PATH)."""
    from pods import netns

    # A3a. Die with the daemon. PR_SET_PDEATHSIG fires when the parent
    # thread exits; the daemon spawns us from its main thread. If it died
    # before this line, getppid() already names another process. Prevents:
    # a pod outliving its daemon (the keeper's death kills pid 1, whose
    # death kills every process of the pid namespace).
    state["step"] = "death signal"
    ns.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != args.daemon_pid:
        raise OSError(errno.ESRCH, "the daemon went away")
    # A3b. The pod's cgroups before unshare(CLONE_NEWCGROUP): the cgroup
    # namespace is rooted where we are. Prevents: pod processes seeing or
    # naming any cgroup above the pod's.
    state["step"] = "cgroup"
    _join_cgroups(args.cgroup)
    # A3c. The network namespace first, alone, while we are still host
    # root: a namespace belongs to the user namespace of the process that
    # creates it, so this one belongs to the host's. Prevents: pod root
    # holding a capability over the pod's network (CAP_NET_ADMIN,
    # CAP_NET_RAW, CAP_NET_BIND_SERVICE are checked against the owner):
    # changing addresses, routes or net.* sysctls, sniffing with AF_PACKET,
    # raw sockets, which would undo the peas' network rules for the whole
    # pod. Only the daemon (host root) configures it.
    state["step"] = "network namespace"
    libc.unshare(libc.CLONE_NEWNET)
    netns.loopback_up()
    # A3d. Every other namespace at once.
    state["step"] = "unshare"
    libc.unshare(libc.CLONE_NEWUSER | libc.CLONE_NEWNS | libc.CLONE_NEWPID | libc.CLONE_NEWIPC
                 | libc.CLONE_NEWUTS | libc.CLONE_NEWCGROUP)
    ns.set_pdeathsig(signal.SIGKILL)  # unshare(CLONE_NEWUSER) changed our credentials
    # A3e. Slave, not private: a host unmount still reaches our copy of the
    # host's mounts during the few milliseconds before the old root is
    # detached. Prevents: anything we mount propagating back to the daemon
    # or the host.
    state["step"] = "mounts"
    ns.mount(None, "/", None, ns.MS_REC | ns.MS_SLAVE)
    # A3f. Hold the pod root now: after unshare (an fd opened before would
    # name the daemon's mount namespace, where pid 1 may not mount) but
    # before becoming pod root, for whom the path under $PEAPOD_RUN
    # (host-owned, mode 0700) is out of reach. We are still host uid 0, the
    # owner. The pod root arrived from the daemon's namespace as a locked
    # mount, which pivot_root refuses (EINVAL); a bind of it onto itself,
    # made here, is a mount of our own namespace.
    ns.mount(args.root, args.root, None, ns.MS_BIND | ns.MS_REC)
    root_fd = os.open(args.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    state["step"] = "hostname"
    ns.sethostname(args.hostname)
    control.send_msg(sync, control.step_msg("unshared"))
    return root_fd


# -- A4. daemon: what only host root may do to the keeper ----------------------------

async def configure_pod(d) -> None:
    """A4, in the daemon, while the keeper waits for "go"."""
    import trio

    from kernel import idmap
    from kernel import cgroup
    from pods import netns

    pid = d.keeper.pid
    # A4a. The id maps. Only a process with CAP_SETUID/CAP_SETGID over the
    # parent namespace may map ranges of ids: that is us, not the pod.
    try:
        Path(f"/proc/{pid}/uid_map").write_text(idmap.lines(d.policy.uid_map))
        Path(f"/proc/{pid}/gid_map").write_text(idmap.lines(d.policy.gid_map))
    except OSError as e:
        raise StartError(f"writing the id maps: {e.strerror}") from e
    # A4b. The keeper unshared its cgroup namespace at the pod's cgroup;
    # now it (and pid 1 after it) belongs to the default pea: no pod
    # process is ever outside a pea.
    cgroup.join(pid, d.name, d.policy.default_pea)
    # A4c. The veth, its pod end created directly in the pod's namespace
    # (ip(8) in a worker thread: PeaFS and the supervisor keep their loops).
    if d.policy.net is not None:
        try:
            d.veth = await trio.to_thread.run_sync(netns.add_veth, d.name, pid, d.policy.net)
        except OSError as e:
            raise StartError(f"network: {e.strerror or e}") from e
    # A4d. The peas' network rules, in the kernel, before any pod program
    # runs. Prevents: a first instant in which a pea reaches what its
    # rules refuse.
    try:
        await trio.to_thread.run_sync(d.attach_net_rules)
    except OSError as e:
        raise StartError(f"network rules (cgroup socket-address BPF): "
                         f"{e.strerror or e}") from e


# -- A5. keeper: pod root, and pid 1 ----------------------------------------------------

def keeper_fork_pid1(args, sync: socket.socket, root_fd: int, state: dict) -> int:
    """A5, in the keeper, after "go". Returns pid 1's pid (in the keeper's
    namespace); never returns in pid 1."""
    # A5a. Pod root (mapped id 0): from here every file access is the
    # pod's, and capabilities are those of the pod's user namespace only.
    state["step"] = "pod root"
    os.setgroups([])
    os.setresgid(args.root_gid, args.root_gid, args.root_gid)
    os.setresuid(args.root_uid, args.root_uid, args.root_uid)
    ns.set_pdeathsig(signal.SIGKILL)  # cleared by the uid change
    # A5b. Not dumpable. Prevents: pod root ptracing, reading the memory
    # of, or opening /proc/PID/fd of its (unfiltered, privileged) pid 1 or
    # of us.
    ns.prctl(ns.PR_SET_DUMPABLE, 0)
    # A5c. fork: pid 1 of the new pid namespace. The pipe holds pid 1 back
    # until the daemon has its pid (the steps stay in order), and tells it
    # if we died before its death signal was set.
    state["step"] = "fork"
    held_r, held_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(held_w)
        try:
            code = pid1_enter_root(args, sync, root_fd, held_r)
        except BaseException as e:  # report, never return into the keeper's code
            try:
                control.send_msg(sync, control.error_msg("pid 1", e))
            except OSError:
                pass
            code = 1
        os._exit(code)
    os.close(held_r)
    os.close(root_fd)
    control.send_msg(sync, control.step_msg("init", pid=pid))
    jsonline.write_line(held_w, control.step_msg("init"))
    os.close(held_w)
    sync.close()
    return pid


# -- A6. pid 1: the pod's root ----------------------------------------------------------

def pid1_enter_root(args, sync: socket.socket, root_fd: int, held_r: int) -> int:
    """A6, in pid 1; then pid 1's life (pods/init.py, reap_forever)."""
    from pods import init, rootfs

    state = {"step": "death signal"}
    ns.set_pdeathsig(signal.SIGKILL)
    # A6a. The keeper may have died between fork and prctl: then the pipe's
    # only writer is gone and it ends without a message.
    msg, _ = jsonline.read_line(held_r)
    os.close(held_r)
    if msg is None:
        return 1
    try:
        # A6b. /proc of the pod's pid namespace (read-only) and the minimal
        # /dev under the pod root, while the host's /proc is still visible
        # (the kernel requires it). Prevents: a /proc showing host processes,
        # host devices.
        state["step"] = "proc and dev"
        rootfs.mount_proc_and_dev(root_fd, args.pts_gid if args.pts_gid >= 0 else None)
        # A6c. pivot_root onto the pod root, the old root detached. Prevents:
        # any path in the pod naming a host file.
        state["step"] = "pivot"
        rootfs.pivot_into(root_fd)
        os.close(root_fd)
    except BaseException as e:
        control.send_msg(sync, control.error_msg(f"pid 1: {state['step']}", e))
        return 1
    control.send_msg(sync, control.step_msg("ready"))
    sync.close()
    # A6d. Nothing of the keeper's stays open in pid 1.
    os.closerange(3, 1 << 16)
    devnull = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)
    return init.reap_forever()


# -- A7. daemon: the handle on the pod ------------------------------------------------

def hold_pid1(d, pid: int) -> None:
    """A7a, when the keeper names pid 1: a pidfd of it, the handle on the pod
    for every later step (a pidfd cannot be redirected by pid reuse)."""
    d.init_pid = pid
    d.init_pidfd = os.pidfd_open(pid)


def check_pid1(d) -> None:
    """A7b, once pid 1 is ready. Prevents: a reused pid standing for the
    pod: the pidfd must name pid 1 of the keeper's pid namespace."""
    if procfs.vpid(d.init_pid) != 1 or procfs.ppid(d.init_pid) != d.keeper.pid:
        raise StartError("pod setup: pid 1 vanished")


# -- A8. tagger: ready to fork monitors ---------------------------------------------------

def tagger_ready(args, sock: socket.socket) -> None:
    """A8, in the tagger (the fork server), before its first request."""
    # A8a. Die with the daemon (PR_SET_PDEATHSIG fires when the thread that
    # forked us ends: the daemon's main thread). Prevents: a fork server
    # holding a pod's descriptors after its daemon.
    ns.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != args.daemon_pid:
        raise OSError(errno.ESRCH, "the daemon went away")
    # A8b. Nothing but 0-2 and the daemon's socket (Popen closed the rest:
    # checked, a monitor must inherit nothing it was not sent).
    libc.close_all_but({0, 1, 2, sock.fileno()})
    # A8c. What every pod process needs, computed once: the filter programs
    # (with a listener, and without: a daemon without supervisor).
    _seccomp.program(True)
    _seccomp.program(False)
    control.send_msg(sock, control.step_msg("ready"))


async def tagger_started(d, sock: socket.socket) -> None:
    """The daemon's side of A8: the tagger's "ready", within 30 s; then its
    socket is ``d.tagger_sock`` (a trio socket) and its pidfd
    ``d.tagger_pidfd``. A failure is a StartError naming the step."""
    import trio

    def gone() -> str:
        return _ended(d, d.tagger, "the tagger")

    tsock = trio.socket.from_stdlib_socket(sock)
    try:
        with trio.fail_after(30):
            _, fds = await control.arecv_step(tsock, "ready", gone)
    except control.ProtocolError as e:
        tsock.close()
        raise StartError(f"pod setup: tagger: {e}") from None
    except BaseException:
        tsock.close()
        raise
    for fd in fds:
        os.close(fd)
    d.tagger_sock = tsock
    d.tagger_pidfd = os.pidfd_open(d.tagger.pid)


def stop_tagger(d) -> None:
    """The tagger killed and reaped, its socket and pidfd closed (a stop, or
    a restart). Its running monitors go on: each holds its own socket to
    the daemon."""
    import trio

    if d.tagger is not None:
        if d.tagger.poll() is None:
            d.tagger.kill()
        d.tagger.wait()
    if d.tagger_sock is not None:
        d.tagger_sock.close()
        d.tagger_sock = None
    if d.tagger_pidfd is not None:
        try:
            trio.lowlevel.notify_closing(d.tagger_pidfd)
        except RuntimeError:       # outside trio (cleanup)
            pass
        os.close(d.tagger_pidfd)
        d.tagger_pidfd = None


async def restart_tagger(d) -> None:
    """A2 and A8 again, when the tagger died: the dead one reaped, a new one
    started from the main thread and awaited."""
    stop_tagger(d)
    await tagger_started(d, spawn_tagger(d))


# -- the drivers: A2-A8 from the daemon, A3 and A5 from the keeper ------------------------

async def start_pod(d) -> None:
    """The daemon's side of steps A2-A8 (after A1, before the supervisor)."""
    import trio

    def gone() -> str:
        return _ended(d, d.keeper, "the keeper")

    async def expect(step: str) -> dict:
        try:
            msg, fds = await control.arecv_step(sock, step, gone)
        except control.ProtocolError as e:
            raise StartError(f"pod setup: {e}") from None
        for fd in fds:
            os.close(fd)
        return msg

    sock = trio.socket.from_stdlib_socket(spawn_keeper(d))          # A2
    tagger_sock = spawn_tagger(d)                                    # A2 (tagger)
    try:
        with trio.fail_after(30):
            await expect("unshared")                                 # A3 (keeper)
            await configure_pod(d)                                   # A4
            await control.asend_msg(sock, control.step_msg("go"))
            msg = await expect("init")                               # A5 (keeper)
            if not isinstance(msg.get("pid"), int) or msg["pid"] <= 0:
                raise StartError(f"pod setup: init: no pid in {msg!r}")
            hold_pid1(d, msg["pid"])                                 # A7a
            await expect("ready")                                    # A6 (pid 1)
    finally:
        sock.close()
    check_pid1(d)                                                    # A7b
    await tagger_started(d, tagger_sock)                             # A8 (tagger)


def keeper(args) -> int:
    """The keeper's side: A3, wait for "go", A5; then wait for pid 1, whose
    end is the pod's end. Any failure is reported with its step."""
    sync = socket.socket(fileno=args.sync)
    state = {"step": "start"}
    try:
        # Every module the keeper and pid 1 use, now, as host root: the
        # interpreter's library may be where pod root cannot read (under
        # /root), and no import may happen after A5a.
        for module in ("pods.init", "pods.netns", "pods.rootfs"):
            __import__(module)
        root_fd = keeper_unshare(args, sync, state)                  # A3
        state["step"] = "go"
        control.recv_step(sync, "go")                                # A4 (daemon)
        pid = keeper_fork_pid1(args, sync, root_fd, state)           # A5, A6 (pid 1)
    except control.ProtocolError:
        return 1    # the daemon stopped the start (or went away): nothing to say
    except BaseException as e:
        try:
            control.send_msg(sync, control.error_msg(state["step"], e))
        except OSError:
            pass
        print(f"pods.init: {state['step']}: {e}", file=sys.stderr)
        return 1
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status) & 0xFF
        except InterruptedError:
            continue


# ============================================================================
# B. A process in a pod
# ============================================================================

TIOCGPTPEER = 0x5441
TIOCSPTLCK = 0x40045431
TIOCSCTTY = 0x540E
TIOCSWINSZ = 0x5414

POD_NS = (libc.CLONE_NEWUSER | libc.CLONE_NEWNS | libc.CLONE_NEWIPC | libc.CLONE_NEWUTS
          | libc.CLONE_NEWNET | libc.CLONE_NEWCGROUP)

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MEMFD_NOEXEC = "/proc/sys/vm/memfd_noexec"
MEMFD_NOEXEC_ENFORCED = b"2"   # MFD_EXEC refused, every memfd sealed non-executable


def _seal_memfds() -> None:
    """Set vm.memfd_noexec = 2 for the pid namespace we were forked into
    (the kernel reads the writer's active pid namespace; host root has
    CAP_SYS_ADMIN over the pod's user namespace, which the write needs)."""
    try:
        fd = os.open(MEMFD_NOEXEC, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise OSError(errno.ENOSYS, "the kernel has no vm.memfd_noexec (Linux 6.3 or "
                                    "later is needed to keep memfds from being executed)")
    try:
        os.write(fd, MEMFD_NOEXEC_ENFORCED)
    finally:
        os.close(fd)


# -- B0. tagger and monitor: a request, a fork, the monitor's descriptors -------------

def monitor_descriptors(server: socket.socket, stdio: list[int], keep: list[int]) -> None:
    """B0, in the monitor just forked by the tagger (pods/tagger.py serve):
    the request's stdio on 0-2, and every other descriptor closed but
    ``keep`` (the request's control socket, pid 1's pidfd, the pea's IPC
    namespace). Prevents: a descriptor of the tagger (its socket to the
    daemon, the pidfds of its other monitors, another request's files)
    reaching a monitor, hence a pod process (B7 closes what is left before
    the exec, this leaves nothing for B7 to miss). Then SIGPIPE as a
    program expects it (Python ignores it), for the child's exec."""
    server.close()     # the socket object first: its fd must not be closed twice
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
    libc.close_all_but({0, 1, 2, *keep})
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)


# -- B1. monitor: the pod's pid namespace, for our children only ----------------------

def monitor_fork(args, ctl: socket.socket) -> tuple[int, socket.socket]:
    """B1, in the monitor: setns(pidfd, PID) (only our children enter the pod's
    pid namespace: the child gets a pod pid and pid 1 as its reaper), then
    fork; the child runs B2-B9 (child_steps) and never returns. Returns the
    child's pid and the monitor's end of the handshake socket."""
    ns.setns(args.pidfd, libc.CLONE_NEWPID)
    # The child's end is close-on-exec (Python's default): it ends with a
    # successful exec, which the monitor reads as the end of the stream.
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    child = os.fork()   # this process is single-threaded: fork is safe
    if child == 0:
        mine.close()
        ctl.close()
        child_steps(args, theirs)
    theirs.close()
    os.close(args.pidfd)
    if args.ipcns >= 0:
        os.close(args.ipcns)
    return child, mine


# -- B2-B9. child: into the pea, the namespaces, the user, the filter; exec -------------

def child_steps(args, sync: socket.socket) -> None:
    """B2-B9, in the child; never returns. A failure is reported on ``sync``
    with its step."""
    step = "dumpable"
    try:
        # B2. Not dumpable, before anything else: from B4 until B6 this
        # process is host root *and* in the pod's user namespace, where pod
        # root holds CAP_SYS_PTRACE. The kernel lets a process with that
        # capability over our credentials' namespace ptrace us (or open
        # /proc/PID/mem) only if we are dumpable, or if it also has the
        # capability over our mm's namespace, the host's. Prevents: pod root
        # writing code into a host-root process. The exec at B9 makes CMD
        # dumpable again, with its mm in the pod's namespace.
        ns.prctl(ns.PR_SET_DUMPABLE, 0)
        # B3. The pea's and the limits' cgroups (host paths, host root:
        # before B4). Membership is inherited by everything CMD forks.
        # Prevents: any later step, or CMD, running outside its pea or the
        # pod's limits.
        step = "cgroup"
        _join_cgroups(args.cgroup)
        # B3b. memfd_create() files that cannot be executed, in the pod's
        # pid namespace (the sysctl is per pid namespace since Linux 6.3,
        # and a pod cannot lower it below its parent's; the file belongs to
        # host root, so only we, not pod root, can set it). Prevents: a pea
        # copying a program it may read into a memfd and executing that, an
        # exec PeaFS never sees (no x check, no transition).
        step = "memfd_noexec"
        _seal_memfds()
        # B4. Every other namespace of the pod, atomically through the
        # pidfd. From here on the child sees only the pod (its root and cwd
        # are the pod's root, the host's mounts are unreachable) and holds
        # capabilities only in the pod's user namespace.
        step = "setns"
        ns.setns(args.pidfd, POD_NS)
        os.close(args.pidfd)
        # B4b. The pea's own IPC namespace (pods/peaipc.py). Prevents: SysV
        # IPC and POSIX queues of other peas in reach. Joining needs
        # CAP_SYS_ADMIN over the pod's user namespace, ours since B4.
        if args.ipcns >= 0:
            step = "ipc namespace"
            ns.setns(args.ipcns, libc.CLONE_NEWIPC)
            os.close(args.ipcns)
        os.chdir("/")
        # B5. Session and terminal: setsid in any case. Prevents: CMD having
        # a controlling terminal of the host.
        step = "pty"
        os.setsid()
        if args.pty:
            # A new pty of the pod's devpts instance itself, no symlink
            # followed: /dev is read-only in a pod, and even so a pod-made
            # link must neither redirect this privileged open nor stall it
            # in PeaFS. Prevents: the caller's terminal handed into the pod
            # (TIOCSTI on it would type commands into the host shell).
            master = libc.openat2(libc.AT_FDCWD, "/dev/pts/ptmx",
                                  os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC,
                                  libc.RESOLVE_NO_SYMLINKS | libc.RESOLVE_NO_MAGICLINKS)
            fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
            slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR)
            if args.rows and args.cols:
                fcntl.ioctl(slave, TIOCSWINSZ, struct.pack("HHHH", args.rows, args.cols, 0, 0))
            control.send_msg(sync, control.step_msg("pty"), [master])
            os.close(master)
            fcntl.ioctl(slave, TIOCSCTTY, 0)
            for fd in (0, 1, 2):
                os.dup2(slave, fd)
            if slave > 2:
                os.close(slave)
        # B6. The pod user, without CAP_SYS_PTRACE. Pod root keeps every
        # other capability of the pod's user namespace, but with this one
        # it would reach into processes of other peas running under another
        # uid: /proc/PID/mem, environ, fd/ of another pea need it or the
        # same uid (the kernel's ptrace_may_access). Dropped from the
        # bounding set, it is gone from CMD's sets at the exec (B9) and from
        # every descendant's; no pod process can get it back (nested user
        # namespaces are refused by the filter). A non-root user loses
        # every capability here.
        step = "user"
        ns.prctl(ns.PR_CAPBSET_DROP, ns.CAP_SYS_PTRACE)
        os.setgroups([args.gid])
        os.setresgid(args.gid, args.gid, args.gid)
        os.setresuid(args.uid, args.uid, args.uid)
        # B7. No descriptor of ours survives into CMD but the handshake
        # socket (close-on-exec). Every number, not only those below 1024:
        # the daemon holds one O_PATH handle per PeaFS inode, so the
        # descriptors passed to us (the control socket among them) can have
        # any number. Prevents: a leaked control socket letting CMD talk to
        # the daemon as its tagger.
        libc.close_all_but({0, 1, 2, sync.fileno()})
        # CMD starts with the usual 022, whatever the thread that spawned
        # us had (PeaFS's serving thread runs with 0, in a file-system
        # context of its own, and a worker thread it made may have started
        # us). Prevents: a umask that makes every file CMD creates writable
        # by all.
        os.umask(0o022)
        env = {"PATH": PATH, "HOME": "/root" if args.uid == 0 else "/",
               "HOSTNAME": os.uname().nodename}
        if args.term:
            env["TERM"] = args.term
        # B8. The seccomp filter, last: no_new_privs, the deny list, and the
        # notification listener, which the monitor takes out of us with
        # pidfd_getfd and hands to the daemon's supervisor before we may go
        # on. Prevents: any instruction of CMD running unfiltered or before
        # its supervisor listens.
        step = "seccomp"
        listener = _seccomp.install(notify=args.notify)
        control.send_msg(sync, control.step_msg(
            "seccomp", listener=-1 if listener is None else listener))
        try:
            control.recv_step(sync, "go")
        except (control.ProtocolError, OSError):
            os._exit(126)
        if listener is not None:
            os.close(listener)
        # B9. exec. On success the close-on-exec socket ends with no message.
        step = "exec"
        os.execvpe(args.argv[0], args.argv, env)
    except BaseException as e:  # noqa: BLE001 - anything is a failure to start
        try:
            control.send_msg(sync, control.error_msg(step, e))
        except OSError:
            pass
    os._exit(127)


# -- B8 (monitor side) and the driver ----------------------------------------------------

def start_in_pod(args, ctl: socket.socket) -> tuple[int, int, int | None] | int:
    """The monitor's side of B1-B9: (child pid, its pidfd, the pty master or
    None) once CMD runs, after telling the daemon {"started"}; else the
    exit status, the error already sent to the daemon and the child reaped."""
    child, sync = monitor_fork(args, ctl)                            # B1
    child_pidfd = os.pidfd_open(child)
    master = None
    reaped = []

    def gone() -> str:
        _, status = os.waitpid(child, 0)
        reaped.append(status)
        return f"the pod process ended ({_exit_text(os.waitstatus_to_exitcode(status))})"

    def give_up(text: str, status: int) -> int:
        # Nothing stays behind: the child (stopped at a step, or waiting
        # for "go") is killed and reaped before the daemon hears of it.
        if master is not None:
            os.close(master)
        if not reaped:
            try:
                signal.pidfd_send_signal(child_pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(child, 0)
        os.close(child_pidfd)
        control.send_msg(ctl, {"error": text, "status": status})
        return status

    try:
        try:
            if args.pty:
                _, fds = control.recv_step(sync, "pty", gone)            # B5 (child)
                if len(fds) != 1:
                    for fd in fds:
                        os.close(fd)
                    raise control.ProtocolError("pty", "no terminal came with the message")
                master = fds[0]
            msg, fds = control.recv_step(sync, "seccomp", gone)          # B8 (child)
            for fd in fds:
                os.close(fd)
            fd = msg.get("listener")
            if not isinstance(fd, int):
                raise control.ProtocolError("seccomp", f"no listener in {msg!r}")
            if fd >= 0:
                # The listener lives in the child; take a copy through its
                # pidfd (we are host root, it is our child) for the daemon's
                # supervisor, before the child may run anything filtered.
                listener = libc.pidfd_getfd(child_pidfd, fd)
                control.send_msg(ctl, {"listener": True}, [listener])
                os.close(listener)
                reply, _ = control.recv_msg(ctl)
                if not reply or not reply.get("ok"):
                    return give_up("the supervisor refused the listener", 126)
            control.send_msg(sync, control.step_msg("go"))
            data, anc, _, _ = sync.recvmsg(control.MAX_MSG, socket.CMSG_SPACE(4))  # B9
            if data:    # an error at exec (an end of stream: CMD runs)
                control.parse_step(data, control._fds_of(anc), "exec")
        except control.ProtocolError as e:
            if e.step == "exec":
                # `pod: exec CMD: Permission denied`: 126 when CMD cannot run,
                # 127 when it is not there.
                status = 126 if e.errno in (errno.EACCES, errno.ENOEXEC, errno.EPERM) else 127
                return give_up(e.message, status)
            return give_up(str(e), 126)        # a step before the exec is named
    finally:
        sync.close()
    control.send_msg(ctl, {"started": child, "vpid": procfs.vpid(child)})
    return child, child_pidfd, master
