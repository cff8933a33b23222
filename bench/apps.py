"""Real services in their pods vs the same services on bindfs and on the host, in one run.

``python -m bench apps [--quick]``, as root: the web stack (bench/apps_web.py:
Apache static page and CGI + MariaDB page, requests/s and latency under
wrk) and then the mail stack (bench/apps_mail.py: Postfix + procmail,
messages per second for 1 000 messages over SMTP). Each module runs its pod
leg, its bindfs leg (the host leg's chroot in bindfs of its root: the FUSE
floor) and its host leg rotated, and reports pod/host, bindfs/host and
pod/bindfs; see their docstrings for what each leg is. The paper measured 4% overhead for Apache
(the Pea-Pod paper, section 6): a ratio of 0.96 is the bar.

Either module also runs alone: ``python -m bench apps_web``, ``apps_mail``.
"""

from __future__ import annotations

from bench import apps_mail, apps_web


def run(args) -> dict:
    rows = [{"stack": "web", **r} for r in apps_web.rows(args)]
    rows += [{"stack": "mail", **r} for r in apps_mail.rows(args)]
    return {"rows": rows,
            "notes": "pod/host, bindfs/host, pod/bindfs: ratios of the figure in each row "
                     "(throughput: higher is better; times and latencies: lower is better)"}
