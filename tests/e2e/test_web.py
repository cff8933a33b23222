"""The web pod end to end: real Apache, a CGI program and MariaDB in three
peas, and break-ins into Apache, the CGI pea and the database server that
the peas contain.

A copy of examples/web/pod.toml (its own pod name ``webtNNNNNN``, root under
a tmp dir, [pod.net] address 10.88.N.2/24 with N in 200-250, host id range;
the peas are the example's, unchanged) is set up with examples/web/setup,
which installs apache2, mariadb-server and python3-pymysql if they are
missing (this test never skips for them), builds the root (the shop
database included), starts the pod (Apache is its init, pea httpd) and
MariaDB in the db pea. From the host, over the pod's veth:

- ``GET /`` is the static page;
- ``GET /cgi-bin/items`` lists the five rows of shop.items, read by the CGI
  program (python3 + pymysql) over MariaDB's Unix socket; its
  ``X-Peapod-Pea`` header (the CGI's own cgroup) says ``cgi``: executing it
  moved Apache's child from httpd to cgi.

The break-ins. Neither the httpd pea nor the db pea may execute a shell, an
interpreter or any other program to probe with (httpd: Apache, the loader
and the CGI programs, which leave the pea; db: MariaDB and the loader). An
attacker who has taken over Apache or MariaDB needs none: they run their
own code in that process. We do the equivalent, honestly and without
touching the policy (as tests/e2e/test_mail.py does): the payload is a small
C program compiled on the host with gcc (a dependency of `make deps`),
planted where the attacker could write it (Apache's log directory
/var/log/apache2/, which httpd may write; /tmp/, which db may write), and
run with the dynamic loader, which every pea may execute:

    pod exec NAME --pea httpd -- /lib64/ld-linux-x86-64.so.2 /var/log/apache2/PROBE ...

The loader only reads and maps the file, so no exec rule names it and no
transition happens: the payload runs in the pea (it prints its own cgroup to
prove it) with every right the pea has and none more, as pod root (uid 0:
Unix permissions and CAP_DAC_OVERRIDE would allow all of it, so each refusal
is PeaFS's) and, for httpd, also as www-data (Apache's user). Every attempt
must fail with exactly EACCES:

- httpd: connect to /run/mysqld/mysqld.sock, read the database files, list
  /var/lib/mysql, read the CGI's database password (/etc/shop/db.cnf),
  execute /bin/sh, write /var/www/html/index.html or create a file there;
  while reading the site and Apache's configuration works. The payload
  itself (mode 0755) cannot be executed directly either: httpd may write
  that directory, not execute from it.
- cgi (python3 runs there, so the probe is python3 itself, as root and as
  www-data): write /var/www/html/index.html, create files in /var/www/html
  and /var/www/cgi-bin, read the database files; while its connect to the
  database socket works.
- db: execute /bin/sh and /usr/bin/python3 (by `pod exec` directly and from
  the payload), and load /usr/bin/python3 with the loader (it may not read
  it); while reading its own data files works.

Each refusal must be in the pod's audit log (ROOT.peapod/audit.log, beside
the staging root: pods/runtime.py), with the pea, the path and the missing
permission, except one:
connect() on a Unix socket never reaches PeaFS (the kernel decides from the
per-pea attributes PeaFS gave at lookup, which cannot tell a connect from a
stat), and the seccomp supervisor lets AF_UNIX connect() through, so that
refusal is EACCES but is not audited (a known gap). The audit lines are
checked for the probes run as pod root: as www-data most attempts are
already refused by the kernel's Unix permission check (mode bits), before
PeaFS is asked, so only their errno is checked.

Teardown: `pod stop`; then nothing may be left (no entry in `pod list`, no
mount below the root or the run dir, no process, cgroup, veth or runtime
dir); the tmp root is removed in every case. Every step has a time limit.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import urllib.request
from pathlib import Path

from pods import runtime

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "examples" / "web" / "setup"
LOADER = "/lib64/ld-linux-x86-64.so.2"
HTTPD_PROBE = "/var/log/apache2/peapod-probe"
DB_PROBE = "/tmp/peapod-probe"
ROWS = ["1\tgreen peas\t1.20", "2\tsugar snap pod\t2.40", "3\tpea soup\t3.10",
        "4\tsnow peas\t2.90", "5\tchickpeas\t1.75"]

PROBE_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* The attacker's payload: each pair of arguments is an operation and a path;
   one line per pair, "OP PATH OK" or "OP PATH ERRNONAME". The first line is
   the unified-hierarchy line of /proc/self/cgroup: the pea it runs in. */
int main(int argc, char **argv) {
    char line[256], cg[256] = "";
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (f) {
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, "0::", 3)) { strcpy(cg, line); break; }
        fclose(f);
    }
    cg[strcspn(cg, "\n")] = 0;
    printf("cgroup %s\n", cg);
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *op = argv[i], *path = argv[i + 1];
        int r;
        fflush(stdout);
        if (!strcmp(op, "exec")) {
            char *const args[] = {(char *)path, "-c", "print('it runs')", NULL};
            r = execv(path, args);
        } else if (!strcmp(op, "create")) {
            r = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
        } else if (!strcmp(op, "write")) {
            r = open(path, O_WRONLY | O_APPEND);
        } else if (!strcmp(op, "read")) {
            r = open(path, O_RDONLY);
        } else if (!strcmp(op, "list")) {
            r = open(path, O_RDONLY | O_DIRECTORY);   /* what opendir(3) does */
        } else if (!strcmp(op, "connect")) {
            struct sockaddr_un sa = {.sun_family = AF_UNIX};
            strncpy(sa.sun_path, path, sizeof sa.sun_path - 1);
            r = socket(AF_UNIX, SOCK_STREAM, 0);
            if (r >= 0 && connect(r, (struct sockaddr *)&sa, sizeof sa) < 0) {
                int e = errno;
                close(r);
                r = -1;
                errno = e;
            }
        } else {
            r = -1;
            errno = EINVAL;
        }
        printf("%s %s %s\n", op, path, r < 0 ? strerrorname_np(errno) : "OK");
        if (r >= 0) close(r);
    }
    return 0;
}
"""

# (operation, path) each payload tries, and what must happen.
HTTPD_REFUSED = [
    ("connect", "/run/mysqld/mysqld.sock"),
    ("read", "/var/lib/mysql/ibdata1"),
    ("read", "/var/lib/mysql/shop/items.ibd"),
    ("list", "/var/lib/mysql"),
    ("read", "/etc/shop/db.cnf"),
    ("exec", "/bin/sh"),
    ("write", "/var/www/html/index.html"),
    ("create", "/var/www/html/defaced.html"),
]
HTTPD_ALLOWED = [("read", "/var/www/html/index.html"), ("read", "/etc/apache2/apache2.conf")]
DB_REFUSED = [("exec", "/bin/sh"), ("exec", "/usr/bin/python3"), ("read", "/usr/bin/python3"),
              ("read", "/etc/shop/db.cnf")]
DB_ALLOWED = [("read", "/var/lib/mysql/ibdata1")]
# Refusals PeaFS never sees (see the docstring): EACCES, but not audited.
NOT_AUDITED = {("connect", "/run/mysqld/mysqld.sock")}

# The cgi pea's probe: python3, which that pea may run.
CGI_PROBE = r"""
import errno, os, socket, sys
def attempt(op, path):
    try:
        if op == "write":
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        elif op == "create":
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        elif op == "read":
            os.close(os.open(path, os.O_RDONLY))
        elif op == "connect":
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            s.close()
        return "OK"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
args = sys.argv[1:]
for op, path in zip(args[::2], args[1::2]):
    print(op, path, attempt(op, path))
"""
CGI_REFUSED = [
    ("write", "/var/www/html/index.html"),
    ("create", "/var/www/html/defaced.html"),
    ("create", "/var/www/cgi-bin/planted"),
    ("read", "/var/lib/mysql/ibdata1"),
]
CGI_ALLOWED = [("connect", "/run/mysqld/mysqld.sock"), ("read", "/var/www/html/index.html")]


# ------------------------------------------------------------------ helpers

def free_address() -> str:
    """10.88.N.2/24 with N in 200-250 (the web tests' share of 10.88/16),
    whose .1 and .2 no interface holds."""
    used = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True,
                          timeout=20).stdout
    for _ in range(200):
        n = random.randint(200, 250)
        if f" 10.88.{n}.1/" not in used and f" 10.88.{n}.2/" not in used:
            return f"10.88.{n}.2/24"
    raise AssertionError("no free 10.88.N.0/24 (N in 200-250) for a test pod")


def http_get(url: str, timeout: float = 20):
    """(status, headers, body), without any proxy of the environment."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as r:
        return r.status, r.headers, r.read().decode()


def read_audit(path: Path, offset: int = 0) -> list[dict]:
    if not path.exists():
        return []
    with open(path, "rb") as f:
        f.seek(offset)
        return [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]


def audit_entry_for(pea: str, op: str, path: str, entries: list[dict]) -> dict | None:
    """The audit line that the refusal of (op, path) in ``pea`` writes."""
    real = os.path.realpath
    for e in entries:
        if e.get("pea") != pea or e.get("complain"):
            continue
        if op == "exec":
            # The kernel opens the file the symlinks lead to (/usr/bin/dash),
            # and /bin is the usr-merge link to usr/bin.
            if e["operation"] == "exec" and e["need"] == "x" and real(e["path"]) == real(path):
                return e
        elif op == "create":
            # Creating is a write in the directory: the refused path is the directory.
            if (e["operation"] == "create" and "w" in e["need"]
                    and e["path"] == os.path.dirname(path)):
                return e
        elif op == "list":
            if e["operation"] == "opendir" and e["path"] == path and "r" in e["need"]:
                return e
        elif op in ("write", "read"):
            want = "w" if op == "write" else "r"
            if (e["operation"] == "open" and real(e["path"]) == real(path)
                    and want in e["need"]):
                return e
    return None


def results_of(stdout: str) -> dict:
    return {tuple(line.split()[:2]): line.split()[2] for line in stdout.splitlines()
            if len(line.split()) == 3 and not line.startswith("cgroup ")}


def assert_outcomes(results: dict, refused, allowed, who: str) -> None:
    for op, path in refused:
        assert results.get((op, path)) == "EACCES", f"{who}: {op} {path}: {results.get((op, path))}"
    for op, path in allowed:
        assert results.get((op, path)) == "OK", f"{who}: {op} {path}: {results.get((op, path))}"


def assert_audited(entries: list[dict], name: str, pea: str, refused, uid: int) -> None:
    for op, path in refused:
        if (op, path) in NOT_AUDITED:
            continue
        mine = [e for e in entries if e.get("uid") == uid]
        e = audit_entry_for(pea, op, path, mine)
        assert e is not None, f"no audit line for {pea} uid {uid}: {op} {path} in {entries}"
        assert e["pod"] == name and e["complain"] is False, e


# ------------------------------------------------------------------ the test

def test_web_pod_end_to_end(tmp_path, e2e):
    name = f"webt{random.randrange(10**6):06d}"
    address = free_address()
    ip = address.split("/")[0]
    base = tmp_path
    root = base / "root"
    policy = e2e.copy_policy(REPO / "examples" / "web" / "pod.toml", base / "pod.toml",
                             name=name, root=root, address=address,
                             id_base=300_000_000 + random.randrange(1000) * 65536)
    run = e2e.PodRun(base)
    passed = False
    stop = None
    left: list[str] = []
    try:
        # 1. Packages (installed if missing) and the root, without starting.
        r = run.run([SETUP, "--policy", policy, "--no-start"], timeout=1800)
        assert r.returncode == 0, f"setup --no-start failed:\n{r.stdout}\n{r.stderr}"
        assert (root / ".peapod-built").is_file()
        assert f"{ip} web.pod.test web" in (root / "etc" / "hosts").read_text()

        # The attacker's payload, not executable, where each pea may write.
        src = base / "probe.c"
        src.write_text(PROBE_C)
        binary = base / "probe"
        cc = subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(src)],
                            capture_output=True, text=True, timeout=120)
        assert cc.returncode == 0, f"gcc (installed by `make deps`) failed: {cc.stderr}"
        for planted, mode in ((HTTPD_PROBE, 0o755), (DB_PROBE, 0o644)):
            dst = root / planted.lstrip("/")
            shutil.copyfile(binary, dst)
            os.chmod(dst, mode)

        # 2. Start: setup is idempotent (the root is kept, the pod and MariaDB start).
        r = run.run([SETUP, "--policy", policy], timeout=400)
        assert r.returncode == 0, f"setup failed:\n{r.stdout}\n{r.stderr}"
        assert "is already built" in r.stdout
        assert f"answers on {ip}:80" in r.stdout
        listed = {p["name"]: p for p in run.listed()}
        assert listed.get(name, {}).get("state") == "running", listed

        # 3. The static page and the CGI page with the database's rows.
        status, _, body = http_get(f"http://{ip}/")
        assert status == 200 and "Pea-Pod web example" in body, (status, body)
        status, headers, body = http_get(f"http://{ip}/cgi-bin/items")
        assert status == 200, (status, body)
        assert body.splitlines() == ROWS, body
        assert headers.get("X-Peapod-Pea") == "cgi", dict(headers)
        ps = run.pod("ps", name, "--json", timeout=30)
        assert ps.returncode == 0, ps.stderr
        peas = {p["pea"] for p in json.loads(ps.stdout) if "mariadbd" in p["command"]}
        assert peas == {"db"}, ps.stdout

        audit = runtime.lasting_dir(root) / "audit.log"
        offset = audit.stat().st_size if audit.exists() else 0

        # 4. A break-in into Apache: the payload in the httpd pea.
        args = [a for pair in HTTPD_REFUSED + HTTPD_ALLOWED for a in pair]
        for uid in (0, 33):
            r = run.pod("exec", name, "--pea", "httpd", "--user", str(uid), "--", LOADER,
                        HTTPD_PROBE, *args, timeout=60)
            assert r.returncode == 0, f"httpd probe: {r.returncode} {r.stdout} {r.stderr}"
            first = r.stdout.splitlines()[0]
            assert first == "cgroup 0::/httpd", f"the payload is not in the httpd pea: {first}"
            assert_outcomes(results_of(r.stdout), HTTPD_REFUSED, HTTPD_ALLOWED, f"httpd uid {uid}")
        # Executed directly (mode 0755), the payload is refused by its pea rule:
        # httpd may write /var/log/apache2/, not execute from it.
        r = run.pod("exec", name, "--pea", "httpd", "--", HTTPD_PROBE, timeout=60)
        assert r.returncode == 126 and "Permission denied" in r.stderr, (r.returncode, r.stderr)
        assert not r.stdout.startswith("cgroup"), r.stdout
        assert "<h1>Pea-Pod web example</h1>" in (root / "var/www/html/index.html").read_text()
        assert not (root / "var/www/html/defaced.html").exists()

        # 5. The cgi pea: it may reach the database, not change the site.
        args = [a for pair in CGI_REFUSED + CGI_ALLOWED for a in pair]
        for uid in (0, 33):
            r = run.pod("exec", name, "--pea", "cgi", "--user", str(uid), "--",
                        "/usr/bin/python3", "-I", "-c", CGI_PROBE, *args, timeout=60)
            assert r.returncode == 0, f"cgi probe: {r.returncode} {r.stdout} {r.stderr}"
            assert_outcomes(results_of(r.stdout), CGI_REFUSED, CGI_ALLOWED, f"cgi uid {uid}")
        assert not (root / "var/www/cgi-bin/planted").exists()

        # 6. A break-in into MariaDB: nothing but the server executes in db.
        for prog in ("/bin/sh", "/usr/bin/python3"):
            r = run.pod("exec", name, "--pea", "db", "--", prog, "-c", "print('it runs')",
                        timeout=60)
            assert r.returncode == 126 and "it runs" not in r.stdout, (prog, r.returncode,
                                                                        r.stdout)
            assert "Permission denied" in r.stderr, (prog, r.stderr)
        args = [a for pair in DB_REFUSED + DB_ALLOWED for a in pair]
        r = run.pod("exec", name, "--pea", "db", "--", LOADER, DB_PROBE, *args, timeout=60)
        assert r.returncode == 0, f"db probe: {r.returncode} {r.stdout} {r.stderr}"
        assert r.stdout.splitlines()[0] == "cgroup 0::/db", r.stdout
        assert_outcomes(results_of(r.stdout), DB_REFUSED, DB_ALLOWED, "db")

        # 7. Every refusal PeaFS sees is in the audit log.
        entries = read_audit(audit, offset)
        assert_audited(entries, name, "httpd", HTTPD_REFUSED + [("exec", HTTPD_PROBE)], 0)
        assert_audited(entries, name, "cgi", CGI_REFUSED, 0)
        assert_audited(entries, name, "db", DB_REFUSED, 0)
        # As www-data, what Unix permissions allow is still refused by the pea.
        assert_audited(entries, name, "httpd", [("read", "/etc/shop/db.cnf"),
                                                ("exec", "/bin/sh")], 33)
        direct = [e for e in entries if e["pea"] == "db" and e["operation"] == "exec"]
        # pod exec's two and the payload's two.
        assert len(direct) == 4, direct
        # The site still works after all that.
        status, _, body = http_get(f"http://{ip}/cgi-bin/items")
        assert status == 200 and body.splitlines() == ROWS, (status, body)
        passed = True
    finally:
        try:
            stop = run.pod("stop", name, "--timeout", "10", timeout=120)
        except subprocess.TimeoutExpired:
            stop = None
        left = e2e.leftovers(run, name, root)
        if left:
            e2e.forced_cleanup(run, name)
        e2e.safe_rmtree(root)
        if not e2e.mounts_under(base):
            shutil.rmtree(base, ignore_errors=True)
    if passed:
        assert stop is not None and stop.returncode == 0, f"pod stop: {stop and stop.stderr}"
        assert not left, f"left behind after pod stop: {left}"
        assert not root.exists() and not base.exists()
