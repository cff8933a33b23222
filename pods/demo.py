"""``python -m pods.demo`` (``make demo``): the two example pods, explained.

For now the demo needs no root and starts nothing: it checks the example
policies (examples/mail, examples/web) and asks the rule engine the
questions the paper's scenarios turn on (can a broken-into mail daemon run a
shell? can the web server reach the database?), printing each answer with the
rule that decides it, exactly as ``pod rules explain`` would.
"""

from __future__ import annotations

import sys
from pathlib import Path

import rules
from pods.rules_cmd import describe

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# (policy, narration, [(pea, path), ...])
SCENES = [
    ("mail", "A break-in into Postfix (pea smtpd) looks for a shell to run:",
     [("smtpd", "/bin/sh"), ("smtpd", "/usr/bin/bash"), ("smtpd", "/usr/lib/klibc/bin/sh.shared")]),
    ("mail", "... or for programs to replace, and mailboxes to read:",
     [("smtpd", "/usr/lib/postfix/sbin/smtpd"), ("smtpd", "/var/mail/alice")]),
    ("mail", "What Postfix needs to do its job is there:",
     [("smtpd", "/etc/postfix/main.cf"), ("smtpd", "/var/spool/postfix/incoming/4F1C2")]),
    ("mail", "On delivery, local(8) executes procmail, which moves to the delivery pea:",
     [("smtpd", "/usr/bin/procmail")]),
    ("mail", "The delivery pea writes the mailboxes (and their lock files) and may run filters:",
     [("delivery", "/var/mail/alice"), ("delivery", "/var/mail"), ("delivery", "/usr/bin/formail")]),
    ("web", "Apache (pea httpd) serves content it cannot change:",
     [("httpd", "/var/www/html/index.html"), ("httpd", "/etc/apache2/apache2.conf")]),
    ("web", "Every CGI program, present or future, runs in the cgi pea:",
     [("httpd", "/usr/lib/cgi-bin/shop.pl")]),
    ("web", "A break-in into Apache cannot reach the database, nor its password:",
     [("httpd", "/run/mysqld/mysqld.sock"), ("httpd", "/var/lib/mysql/shop/orders.ibd"),
      ("httpd", "/etc/mysql/debian.cnf")]),
    ("web", "The CGI programs reach the database only through its socket:",
     [("cgi", "/run/mysqld/mysqld.sock"), ("cgi", "/var/lib/mysql/shop/orders.ibd")]),
    ("web", "Only MariaDB (pea db) owns the database files:",
     [("db", "/var/lib/mysql/shop/orders.ibd")]),
]


def indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def main() -> int:
    policies = {}
    print("Pea-Pod demo: the paper's two server pods, as policies (no root needed)\n")
    for name in ("mail", "web"):
        path = EXAMPLES / name / "pod.toml"
        shown = path.relative_to(EXAMPLES.parent)
        print(f"$ pod rules check {shown}")
        try:
            policy = rules.load(path)
        except rules.PolicyError as error:
            print(indent(str(error)), file=sys.stderr)
            return 2
        policies[name] = (policy, shown)
        peas = ", ".join(
            f"{p.name} (bind {sorted(p.bind) or 'none'}, connect {'yes' if p.connect else 'no'})"
            for p in policy.peas.values())
        print(f"    ok: pod {policy.name}, root {policy.root}, address "
              f"{policy.net.address if policy.net else 'loopback only'}")
        print(f"    peas: {peas}\n")
    for name, narration, questions in SCENES:
        policy, shown = policies[name]
        print(f"[{name}] {narration}")
        for pea, path in questions:
            print(f"  $ pod rules explain {shown} --pea {pea} {path}")
            print(indent(describe(policy.pea(pea), path, policy.pea(pea).match(path))))
        print()
    print("Try your own: pod rules explain examples/web/pod.toml --pea cgi /etc/shadow --json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
