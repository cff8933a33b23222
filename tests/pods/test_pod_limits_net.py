"""Resource limits (cgroups) and the pod's network (veth or loopback only)."""

from __future__ import annotations

import errno
import random
import signal
import socket
import subprocess

from pods import limits, netns


def test_limits_are_set_where_the_controllers_are(pods):
    pod = pods.start(limits_={"memory": "64M", "pids": 20})
    where = limits.placement()
    for ctrl, mnt in where.items():
        if mnt is None:  # cgroup2 provides it
            from kernel import cgroup

            f = cgroup.pod_cgroup(pod.name) / f"{ctrl}.max"
            want = str(64 << 20) if ctrl == "memory" else "20"
            assert f.read_text().strip() == want
        else:  # a v1 hierarchy (this machine)
            d = mnt / "peapod" / pod.name
            if ctrl == "memory":
                assert int((d / "memory.limit_in_bytes").read_text()) == 64 << 20
            else:
                assert (d / "pids.max").read_text().strip() == "20"
    # Every pod process is in the limit cgroups, including pid 1.
    init_pid = pod.state()["init_pid"]
    assert init_pid in limits.v1_pids(pod.name) or all(m is None for m in where.values())

    # Attack: more processes than the limit. fork fails with EAGAIN.
    r = pod.py("import os, errno\n"
               "r, w = os.pipe()\n"
               "kids, failure = [], None\n"
               "for i in range(40):\n"
               "    try:\n"
               "        pid = os.fork()\n"
               "    except OSError as e:\n"
               "        failure = errno.errorcode[e.errno]\n"
               "        break\n"
               "    if pid == 0:\n"
               "        os.close(w)\n"
               "        os.read(r, 1)  # until the parent closes the pipe\n"
               "        os._exit(0)\n"
               "    kids.append(pid)\n"
               "print(failure, len(kids) < 20)\n"
               "os.close(w)\n"
               "for k in kids:\n"
               "    os.waitpid(k, 0)\n", timeout=120)
    assert r.stdout.split()[:2] == ["EAGAIN", "True"], r.stdout + r.stderr

    # Attack: more memory than the limit. The kernel's OOM killer ends it.
    r = pod.py("b = bytearray(256 << 20)\nprint('survived')", timeout=120)
    assert r.returncode == 128 + signal.SIGKILL, r.stdout + r.stderr
    assert "survived" not in r.stdout
    # The pod itself is still there.
    assert pod.exec("true").returncode == 0


def test_veth_with_the_policy_s_address(pods):
    third = random.randrange(1, 250)
    pod = pods.start(net=f"10.232.{third}.2/24")
    host_if = netns.host_ifname(pod.name)
    r = subprocess.run(["ip", "-4", "-o", "addr", "show", host_if], capture_output=True,
                       text=True, timeout=30)
    assert f"10.232.{third}.1/24" in r.stdout
    out = pod.exec("cat", "/proc/net/dev", "/proc/net/fib_trie", "/proc/net/route").stdout
    ifaces = [ln.split(":")[0].strip() for ln in out.splitlines()[2:] if ":" in ln
              and ln.split(":")[0].strip() in ("lo", "eth0")]
    assert sorted(set(ifaces)) == ["eth0", "lo"]
    assert f"10.232.{third}.2" in out
    # default route via the host side
    gw = socket.inet_aton(f"10.232.{third}.1")[::-1].hex().upper()
    assert any(ln.split()[:3] == ["eth0", "00000000", gw] for ln in out.splitlines())
    # The host reaches the pod's kernel: a closed port answers with a reset.
    s = socket.socket()
    s.settimeout(10)
    try:
        code = s.connect_ex((f"10.232.{third}.2", 9))
    finally:
        s.close()
    assert code == errno.ECONNREFUSED
    assert pod.stop().returncode == 0
    assert not netns.veth_exists(pod.name)
