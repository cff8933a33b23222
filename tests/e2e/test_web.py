"""The web pod end to end: real Apache, a CGI program and MariaDB in three
peas, and break-ins into Apache, the CGI pea and the database server that
the peas contain.

A copy of examples/web/pod.toml (its own pod name ``webtNNNNNN``, root under
a tmp dir, [pod.net] address 10.88.N.2/24 with N in 200-250, host id range;
the peas are the example's, unchanged) is set up with examples/web/setup,
which installs apache2, mariadb-server and python3-pymysql if they are
missing (this test never skips for them), builds the root (the shop
database included), starts the pod (its services: Apache in pea httpd,
MariaDB in pea db). From the host, over the pod's veth:

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
import random
import shutil
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "examples" / "web" / "setup"
HTTPD_PROBE = "/var/log/apache2/peapod-probe"
DB_PROBE = "/tmp/peapod-probe"
ROWS = ["1\tgreen peas\t1.20", "2\tsugar snap pod\t2.40", "3\tpea soup\t3.10",
        "4\tsnow peas\t2.90", "5\tchickpeas\t1.75"]

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

def http_get(url: str, timeout: float = 20):
    """(status, headers, body), without any proxy of the environment."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as r:
        return r.status, r.headers, r.read().decode()


# ------------------------------------------------------------------ the test

def test_web_pod_end_to_end(tmp_path, e2e):
    name = f"webt{random.randrange(10**6):06d}"
    # N in 200-250: the web tests' share of 10.88/16.
    address = e2e.free_address(200, 250)
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
        e2e.build_root(run, SETUP, policy, root, f"{ip} web.pod.test web")

        # The attacker's payload, not executable, where each pea may write.
        binary = e2e.compile_probe(base)
        for planted, mode in ((HTTPD_PROBE, 0o755), (DB_PROBE, 0o644)):
            e2e.plant(binary, root, planted, mode)

        # 2. Start: setup is idempotent (the root is kept, the pod and MariaDB start).
        e2e.start_pod(run, SETUP, policy, name, ip, 80, timeout=400)

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

        audit = e2e.Audit(root)

        # 4. A break-in into Apache: the payload in the httpd pea.
        for uid in (0, 33):
            e2e.run_payload(run, name, "httpd", HTTPD_PROBE, HTTPD_REFUSED, HTTPD_ALLOWED,
                            user=uid)
        # Executed directly (mode 0755), the payload is refused by its pea rule:
        # httpd may write /var/log/apache2/, not execute from it.
        e2e.assert_exec_refused(run, name, "httpd", HTTPD_PROBE, output="cgroup")
        assert "<h1>Pea-Pod web example</h1>" in (root / "var/www/html/index.html").read_text()
        assert not (root / "var/www/html/defaced.html").exists()

        # 5. The cgi pea: it may reach the database, not change the site.
        args = e2e.pairs_args(CGI_REFUSED + CGI_ALLOWED)
        for uid in (0, 33):
            r = e2e.pea_exec(run, name, "cgi", "/usr/bin/python3", "-I", "-c", CGI_PROBE, *args,
                             user=uid)
            assert r.returncode == 0, f"cgi probe: {r.returncode} {r.stdout} {r.stderr}"
            e2e.assert_outcomes(e2e.results_of(r.stdout), CGI_REFUSED, CGI_ALLOWED,
                                f"cgi uid {uid}")
        assert not (root / "var/www/cgi-bin/planted").exists()

        # 6. A break-in into MariaDB: nothing but the server executes in db.
        for prog in ("/bin/sh", "/usr/bin/python3"):
            e2e.assert_exec_refused(run, name, "db", prog, "-c", "print('it runs')",
                                    output="it runs")
        e2e.run_payload(run, name, "db", DB_PROBE, DB_REFUSED, DB_ALLOWED)

        # 7. Every refusal PeaFS sees is in the audit log.
        entries = audit.entries()
        e2e.assert_audited(entries, name, "httpd", HTTPD_REFUSED + [("exec", HTTPD_PROBE)], 0,
                           NOT_AUDITED)
        e2e.assert_audited(entries, name, "cgi", CGI_REFUSED, 0, NOT_AUDITED)
        e2e.assert_audited(entries, name, "db", DB_REFUSED, 0, NOT_AUDITED)
        # As www-data, what Unix permissions allow is still refused by the pea.
        e2e.assert_audited(entries, name, "httpd", [("read", "/etc/shop/db.cnf"),
                                                    ("exec", "/bin/sh")], 33)
        direct = [e for e in entries if e["pea"] == "db" and e["operation"] == "exec"]
        # pod exec's two and the payload's two.
        assert len(direct) == 4, direct
        # The site still works after all that.
        status, _, body = http_get(f"http://{ip}/cgi-bin/items")
        assert status == 200 and body.splitlines() == ROWS, (status, body)

        # 8. Moved (README, "Moving a pod"): checkpoint (the pod stops),
        # restore; Apache and MariaDB come back as they were, in their
        # peas, and answer the same pages; a CGI program executed by the
        # restored Apache moves to pea cgi; the break-ins fail as before.
        r = run.pod("checkpoint", name, base / "img", timeout=300)
        assert r.returncode == 0, r.stderr
        before = {p["vpid"]: (p["pea"], p["command"]) for p in json.loads(ps.stdout)
                  if p["vpid"] not in (None, 1)}
        r = run.pod("restore", base / "img", timeout=300)
        assert r.returncode == 0, r.stderr
        status, _, body = http_get(f"http://{ip}/")
        assert status == 200 and "Pea-Pod web example" in body, (status, body)
        status, headers, body = http_get(f"http://{ip}/cgi-bin/items")
        assert status == 200 and body.splitlines() == ROWS, (status, body)
        assert headers.get("X-Peapod-Pea") == "cgi", dict(headers)
        ps = run.pod("ps", name, "--json", timeout=30)
        after = {p["vpid"]: (p["pea"], p["command"]) for p in json.loads(ps.stdout)}
        # Every process of before, with its pid in the pod, pea and command.
        assert {v: after.get(v) for v in before} == before, (before, after)
        assert {p["pea"] for p in json.loads(ps.stdout) if "mariadbd" in p["command"]} == {"db"}
        e2e.run_payload(run, name, "httpd", HTTPD_PROBE, HTTPD_REFUSED, HTTPD_ALLOWED, user=33)
        e2e.assert_exec_refused(run, name, "db", "/bin/sh", "-c", "print('it runs')",
                                output="it runs")
        passed = True
    finally:
        stop, left = e2e.teardown(run, name, root, stop_timeout=10)
        if not e2e.mounts_under(base):
            shutil.rmtree(base, ignore_errors=True)
    if passed:
        e2e.assert_clean(stop, left, root)
        assert not base.exists()
