"""The example policies hold what the paper's scenarios promise."""

from __future__ import annotations

from pathlib import Path

import pytest

import rules

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SHELLS = ["/bin/sh", "/bin/bash", "/bin/dash", "/usr/bin/sh", "/usr/bin/bash",
          "/usr/bin/dash", "/usr/bin/rbash", "/usr/bin/perl", "/usr/bin/python3",
          "/usr/lib/klibc/bin/sh.shared", "/sbin/sh"]


@pytest.fixture(scope="module")
def mail():
    return rules.load(EXAMPLES / "mail" / "pod.toml")


@pytest.fixture(scope="module")
def web():
    return rules.load(EXAMPLES / "web" / "pod.toml")


def test_mail_pod(mail):
    assert mail.name == "mail" and list(mail.peas) == ["smtpd", "delivery"]
    assert mail.root == Path("/var/lib/peapod/mail/root")
    assert mail.net.address == "10.88.0.2/24" and mail.net.host_ip == "10.88.0.1"
    assert [m.path for m in mail.mounts] == ["/usr"]   # the usr-merge links are in the root
    assert not any(m.rw for m in mail.mounts)
    assert mail.default_pea == "smtpd"


@pytest.mark.parametrize("shell", SHELLS)
def test_smtpd_can_neither_execute_nor_read_a_shell(mail, shell):
    m = mail.pea("smtpd").match(shell)
    assert m.perm == "", (shell, m)
    assert m.exec_to is None


@pytest.mark.parametrize("path", ["/usr/bin/x", "/usr/sbin/postfix", "/usr/lib/postfix/sbin/smtpd",
                                  "/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/share/x",
                                  "/usr/bin/procmail", "/etc/postfix/main.cf", "/etc/passwd"])
def test_smtpd_cannot_write_usr_or_etc(mail, path):
    assert "w" not in mail.pea("smtpd").match(path).perm


def test_smtpd_reads_config_writes_spool_binds_25(mail):
    smtpd = mail.pea("smtpd")
    assert smtpd.match("/etc/postfix/main.cf").perm == "r"
    assert smtpd.match("/var/spool/postfix/incoming/4XyZ").perm == "rw"
    assert smtpd.match("/var/spool/postfix/private/smtp").perm == "rw"   # socket: connect needs w
    assert smtpd.match("/etc/shadow").perm == ""
    assert smtpd.match("/usr/lib/postfix/sbin/smtpd").perm == "rx"
    assert smtpd.bind == frozenset({25})
    assert smtpd.match("/var/mail/bob").perm == ""


def test_procmail_moves_smtpd_to_delivery(mail):
    smtpd = mail.pea("smtpd")
    m = smtpd.match("/usr/bin/procmail")
    assert "x" in m.perm and m.exec_to == "delivery"
    assert smtpd.transition("/usr/bin/procmail") == "delivery"
    assert smtpd.transition("/usr/lib/postfix/sbin/local") is None


def test_delivery_writes_mailboxes_and_runs_filters(mail):
    delivery = mail.pea("delivery")
    assert delivery.match("/var/mail/bob").perm == "rw"
    assert delivery.match("/var/mail").perm == "rw"          # USER.lock is created there
    assert "x" in delivery.match("/usr/bin/formail").perm
    assert "x" in delivery.match("/usr/bin/sh").perm
    assert "w" not in delivery.match("/usr/bin/formail").perm
    assert delivery.match("/var/spool/postfix/active/x").perm == ""
    assert delivery.connect is False and delivery.bind == frozenset()
    assert delivery.transition("/usr/bin/procmail") is None


def test_web_pod(web):
    assert web.name == "web" and list(web.peas) == ["httpd", "cgi", "db"]
    assert web.net.address == "10.88.1.2/24"
    assert web.uid_map == (rules.IdRange(0, 300000, 65536),)   # not the mail pod's range
    assert [(s.name, s.pea, s.exec[0]) for s in web.services] == [
        ("apache", "httpd", "/usr/sbin/apache2"), ("mariadb", "db", "/usr/sbin/mariadbd")]


@pytest.mark.parametrize("cgi", ["/usr/lib/cgi-bin/shop.pl", "/usr/lib/cgi-bin/a/b.py",
                                 "/usr/lib/cgi-bin/new-one"])
def test_every_cgi_program_moves_httpd_to_cgi(web, cgi):
    m = web.pea("httpd").match(cgi)
    assert "x" in m.perm and m.exec_to == "cgi"


def test_httpd_reads_content_and_config_but_not_the_database(web):
    httpd = web.pea("httpd")
    assert httpd.match("/var/www/html/index.html").perm == "r"
    assert httpd.match("/etc/apache2/apache2.conf").perm == "r"
    assert httpd.match("/var/log/apache2/access.log").perm == "rw"
    assert httpd.bind == frozenset({80})
    assert httpd.match("/run/mysqld/mysqld.sock").perm == ""
    assert httpd.match("/var/lib/mysql/shop/orders.ibd").perm == ""
    assert httpd.match("/etc/mysql/debian.cnf").perm == ""
    assert httpd.match("/usr/sbin/apache2").perm == "rx"
    for shell in SHELLS:
        assert httpd.match(shell).perm == "", shell


def test_only_cgi_reaches_the_socket_and_only_db_owns_the_files(web):
    for pea in web.peas.values():
        sock = pea.match("/run/mysqld/mysqld.sock").perm
        files = pea.match("/var/lib/mysql/ibdata1").perm
        assert ("w" in sock) == (pea.name in ("cgi", "db")), pea.name
        assert ("w" in files) == (pea.name == "db"), pea.name
        assert ("r" in files) == (pea.name == "db"), pea.name
    cgi = web.pea("cgi")
    assert cgi.match("/usr/lib/cgi-bin/shop.pl").perm == "rx"
    assert cgi.match("/etc/mysql/debian.cnf").perm == ""
    assert cgi.connect is False
    assert web.pea("db").match("/usr/sbin/mariadbd").perm == "rx"
