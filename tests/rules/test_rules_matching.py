"""The four-step matching of docs/FORMAT.md section 7, transitions, links, the API."""

from __future__ import annotations

import builtins
import json
import os
from pathlib import Path

import pytest

import rules
from rules import Match

from rules_helpers import MINIMAL, policy_of

MAIL = """\
[pod]
name = "mail"
root = "root"
default_pea = "smtpd"

[pea.smtpd.files]
"/usr/sbin/smtpd" = "rx"
"/etc/smtpd/" = "r"
"/etc/smtpd/secret" = ""
"/var/spool/smtpd/" = "rw"
"/var/spool/smtpd" = "r"
"/usr/" = "r"
"/usr/bin/" = "rx"
"/usr/bin/sh" = "r"

[pea.smtpd.exec]
"/usr/bin/procmail" = "delivery"
"/usr/lib/filters/" = "delivery"
"/usr/lib/filters/keep" = "smtpd"

[pea.delivery.files]
"/" = "r"
"/var/mail/" = "rw"
"""


@pytest.fixture
def mail():
    return policy_of(MAIL)


def test_design_example(mail):
    m = mail.pea("smtpd").match("/etc/smtpd/smtpd.conf")
    assert m == Match("r", "/etc/smtpd/", "directory", None)
    assert (m.perm, m.rule, m.kind, m.exec_to) == ("r", "/etc/smtpd/", "directory", None)
    assert mail.pea("smtpd").transition("/usr/bin/procmail") == "delivery"
    assert mail.pea("smtpd").transition("/usr/bin/sh") is None


def test_step_1_path_specific_rule_decides(mail):
    smtpd = mail.pea("smtpd")
    assert smtpd.match("/usr/sbin/smtpd") == Match("rx", "/usr/sbin/smtpd", "path", None)
    # A path-specific rule beats the directory-default of its own directory,
    # in both directions (granting less, granting nothing).
    assert smtpd.match("/usr/bin/sh") == Match("r", "/usr/bin/sh", "path", None)
    assert smtpd.match("/etc/smtpd/secret") == Match("", "/etc/smtpd/secret", "path", None)


def test_steps_3_and_4_closest_directory_default_decides(mail):
    smtpd = mail.pea("smtpd")
    assert smtpd.match("/usr/bin/env") == Match("rx", "/usr/bin/", "directory", None)
    assert smtpd.match("/usr/share/doc/x/y/z") == Match("r", "/usr/", "directory", None)
    assert smtpd.match("/usr/bin/sub/dir/x") == Match("rx", "/usr/bin/", "directory", None)


def test_directory_default_does_not_apply_to_the_directory_itself(mail):
    smtpd = mail.pea("smtpd")
    assert smtpd.match("/etc/smtpd") == Match("", "/", "default", None)
    assert smtpd.match("/usr/bin") == Match("r", "/usr/", "directory", None)
    # ... which a path-specific rule without the slash covers.
    assert smtpd.match("/var/spool/smtpd") == Match("r", "/var/spool/smtpd", "path", None)
    assert smtpd.match("/var/spool/smtpd/q1") == Match("rw", "/var/spool/smtpd/", "directory", None)


def test_path_specific_rule_does_not_reach_below(mail):
    smtpd = mail.pea("smtpd")
    assert smtpd.match("/usr/sbin/smtpd/x") == Match("r", "/usr/", "directory", None)
    assert smtpd.match("/etc/smtpd/secret/x") == Match("r", "/etc/smtpd/", "directory", None)


def test_root_default_denies_unless_set(mail):
    smtpd, delivery = mail.pea("smtpd"), mail.pea("delivery")
    assert smtpd.match("/") == Match("", "/", "default", None)
    assert smtpd.match("/bin/sh") == Match("", "/", "default", None)
    assert smtpd.match("/etc") == Match("", "/", "default", None)
    assert delivery.match("/") == Match("r", "/", "directory", None)
    assert delivery.match("/etc/shadow") == Match("r", "/", "directory", None)
    assert delivery.match("/var/mail") == Match("r", "/", "directory", None)
    assert delivery.match("/var/mail/bob") == Match("rw", "/var/mail/", "directory", None)


def test_transitions_use_the_same_matching(mail):
    smtpd = mail.pea("smtpd")
    assert smtpd.transition("/usr/lib/filters/spam") == "delivery"
    assert smtpd.transition("/usr/lib/filters/deep/er") == "delivery"
    assert smtpd.transition("/usr/lib/filters/keep") == "smtpd"
    assert smtpd.transition("/usr/lib/filters") is None      # the directory itself
    assert smtpd.transition("/usr/bin/procmail/x") is None   # path rule does not reach below
    assert smtpd.transition("/") is None
    assert mail.pea("delivery").transition("/usr/bin/procmail") is None


def test_match_carries_the_transition(mail):
    smtpd = mail.pea("smtpd")
    assert smtpd.match("/usr/bin/procmail") == Match("rx", "/usr/bin/", "directory", "delivery")
    assert smtpd.match("/usr/lib/filters/spam") == Match("r", "/usr/", "directory", "delivery")


def test_match_parts_is_match(mail):
    smtpd = mail.pea("smtpd")
    for path in ["/", "/etc/smtpd/x", "/usr/bin/procmail", "/var/spool/smtpd", "/nope/x"]:
        parts = tuple(p for p in path.split("/") if p)
        assert smtpd.match_parts(parts) == smtpd.match(path)
        assert smtpd.transition_parts(parts) == smtpd.transition(path)


def test_root_directory_default_with_exec_on_root():
    text = MINIMAL.replace('name = "t"', 'name = "t"\ndefault_pea = "a"') + \
        '[pea.a.exec]\n"/" = "b"\n"/bin/stay" = "a"\n[pea.b]\n'
    policy = policy_of(text)
    a = policy.pea("a")
    assert a.transition("/bin/anything") == "b"
    assert a.transition("/bin/stay") == "a"
    assert a.transition("/") == "b"       # "/" itself is matched by the "/" rule


@pytest.mark.parametrize("path", ["", "etc", "etc/x", "/etc/", "/etc//x", "/etc/./x",
                                  "/etc/../x", "/..", "/etc/x\0", "//"])
def test_unclean_paths_are_refused(mail, path):
    with pytest.raises(ValueError):
        mail.pea("smtpd").match(path)
    with pytest.raises(ValueError):
        mail.pea("smtpd").transition(path)


def test_bytes_paths_are_refused(mail):
    with pytest.raises(TypeError):
        mail.pea("smtpd").match(b"/etc/x")


def test_unknown_pea(mail):
    with pytest.raises(KeyError):
        mail.pea("nobody")


def test_matching_touches_no_file(mail, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("matching must not touch the file system")

    for name in ("stat", "lstat", "open", "listdir", "scandir", "readlink", "access"):
        monkeypatch.setattr(os, name, refuse)
    monkeypatch.setattr(builtins, "open", refuse)
    smtpd = mail.pea("smtpd")
    smtpd.match("/etc/smtpd/x")
    smtpd.transition("/usr/bin/procmail")
    mail.add_link("/var/spool/smtpd/l", "/etc/smtpd/x")
    smtpd.match("/var/spool/smtpd/l")


def test_lookup_reads_one_table_per_component():
    """O(depth): a lookup does one dict access per path component (seven
    directories, then the name in its directory's table), whether the pea
    has 3 rules or 3000."""
    gets = []

    class CountingDict(dict):
        def get(self, key, default=None):
            gets.append(key)
            return dict.get(self, key, default)

    def instrument(node):
        node.children = CountingDict({k: instrument(v) for k, v in node.children.items()})
        node.files = CountingDict(node.files)
        return node

    path = "/d1/d2/d3/d4/d5/d6/d7/f"
    counts = []
    for n in (3, 3000):
        body = "".join(f'"/d1/d2/d3/x{i}/" = "r"\n"/d1/d2/d3/d4/d5/d6/d7/g{i}" = "r"\n'
                       for i in range(n))
        policy = rules.loads(MINIMAL + body + '"/d1/d2/d3/d4/d5/d6/d7/f" = "rw"\n')
        pea = policy.pea("a")
        instrument(pea._root)
        gets.clear()
        assert pea.match(path).perm == "rw"
        counts.append(len(gets))
    assert counts == [8, 8]


# -- the loaded policy -------------------------------------------------------------


def test_policy_fields(tmp_path):
    text = """\
        [pod]
        name = "mail"
        root = "staging/mail"
        init = ["/usr/sbin/postfix", "start-fg"]
        uid_map = [[0, 200000, 65536]]
        [[pod.mount]]
        host = "/usr/"
        path = "/usr"
        [[pod.mount]]
        host = "/srv/data"
        path = "/data"
        rw = true
        [pod.net]
        address = "10.88.0.2/24"
        [pod.limits]
        memory = "256M"
        pids = 64
        [pea.smtpd]
        complain = true
        [pea.smtpd.net]
        connect = true
        bind = [25, 587]
        """
    path = tmp_path / "pod.toml"
    import textwrap
    path.write_text(textwrap.dedent(text))
    policy = rules.load(path)
    assert policy.file == path and policy.file.is_absolute()
    assert policy.name == "mail" and policy.hostname == "mail"
    assert policy.root == tmp_path / "staging" / "mail"
    assert policy.uid_map == policy.gid_map == (rules.IdRange(0, 200000, 65536),)
    assert policy.default_pea == "smtpd"
    assert policy.init == ("/usr/sbin/postfix", "start-fg")
    assert policy.mounts == (rules.Mount(Path("/usr"), "/usr", False),
                             rules.Mount(Path("/srv/data"), "/data", True))
    assert policy.net == rules.Net("10.88.0.2/24", "10.88.0.2", "10.88.0.1", 24)
    assert policy.limits == rules.Limits(memory=256 << 20, pids=64)
    smtpd = policy.pea("smtpd")
    assert (smtpd.name, smtpd.complain, smtpd.connect, smtpd.bind) == (
        "smtpd", True, True, frozenset({25, 587}))
    assert list(policy.peas) == ["smtpd"]


def test_defaults():
    policy = rules.loads(MINIMAL, base_dir="/base")
    assert policy.file is None
    assert policy.root == Path("/srv/t")
    assert policy.hostname == "t"
    assert policy.init is None and policy.net is None and policy.mounts == ()
    assert policy.limits == rules.Limits(None, None)
    pea = policy.pea("a")
    assert (pea.complain, pea.connect, pea.bind) == (False, False, frozenset())


def test_relative_root_of_loads_is_relative_to_base_dir():
    text = MINIMAL.replace('"/srv/t"', '"pods/t"')
    assert rules.loads(text, base_dir="/base").root == Path("/base/pods/t")
    assert rules.loads(text).root == Path(os.getcwd()) / "pods" / "t"


@pytest.mark.parametrize("memory, value", [
    ('"256M"', 256 << 20), ('"1G"', 1 << 30), ('"2048K"', 2 << 20), ('"64MiB"', 64 << 20),
    ('"1g"', 1 << 30), ("1048576", 1 << 20), ('"3145728"', 3 << 20), ('"256MB"', 256 << 20),
    ('"2097152B"', 2 << 20), ('"2 G"', 2 << 30)])
def test_memory_sizes(memory, value):
    policy = rules.loads(MINIMAL + f"[pod.limits]\nmemory = {memory}\n")
    assert policy.limits.memory == value


def test_policy_is_immutable(mail):
    with pytest.raises(AttributeError):
        mail.name = "other"
    with pytest.raises(TypeError):
        mail.peas["x"] = mail.pea("smtpd")
    with pytest.raises(TypeError):
        mail.pea("smtpd").files["/"] = "rwx"


def test_pea_rules_keep_file_order(mail):
    assert list(mail.pea("smtpd").files)[:3] == ["/usr/sbin/smtpd", "/etc/smtpd/", "/etc/smtpd/secret"]
    assert dict(mail.pea("smtpd").exec) == {"/usr/bin/procmail": "delivery",
                                            "/usr/lib/filters/": "delivery",
                                            "/usr/lib/filters/keep": "smtpd"}


# -- hard links ---------------------------------------------------------------


def test_link_copies_the_rule_of_the_original_in_every_pea(mail):
    smtpd, delivery = mail.pea("smtpd"), mail.pea("delivery")
    mail.add_link("/var/spool/smtpd/pm", "/usr/bin/procmail")
    assert smtpd.match("/var/spool/smtpd/pm") == Match("rx", "/var/spool/smtpd/pm", "path", "delivery")
    assert smtpd.transition("/var/spool/smtpd/pm") == "delivery"
    assert delivery.match("/var/spool/smtpd/pm") == Match("r", "/var/spool/smtpd/pm", "path", None)


def test_link_cannot_launder_a_read_only_file_into_a_writable_directory(mail):
    """The attack: smtpd may write its spool; linking a file it may only read
    into the spool must not make that file writable through the new name."""
    smtpd = mail.pea("smtpd")
    mail.add_link("/var/spool/smtpd/conf", "/etc/smtpd/smtpd.conf")
    assert smtpd.match("/var/spool/smtpd/conf").perm == "r"
    mail.add_link("/var/spool/smtpd/secret", "/etc/smtpd/secret")
    assert smtpd.match("/var/spool/smtpd/secret").perm == ""
    # The spool's other names are untouched.
    assert smtpd.match("/var/spool/smtpd/other").perm == "rw"


def test_link_rule_takes_precedence_over_a_policy_rule_and_drop_restores_it(mail):
    smtpd = mail.pea("smtpd")
    mail.add_link("/usr/bin/sh", "/etc/smtpd/secret")
    assert smtpd.match("/usr/bin/sh") == Match("", "/usr/bin/sh", "path", None)
    mail.drop_link("/usr/bin/sh")
    assert smtpd.match("/usr/bin/sh") == Match("r", "/usr/bin/sh", "path", None)


def test_link_without_transition_shadows_a_directory_transition(mail):
    smtpd = mail.pea("smtpd")
    mail.add_link("/usr/lib/filters/copy", "/etc/smtpd/x")
    assert smtpd.transition("/usr/lib/filters/copy") is None
    assert smtpd.match("/usr/lib/filters/copy").exec_to is None
    mail.drop_link("/usr/lib/filters/copy")
    assert smtpd.transition("/usr/lib/filters/copy") == "delivery"


def test_link_of_a_link_and_relinking(mail):
    smtpd = mail.pea("smtpd")
    mail.add_link("/tmp/a", "/usr/sbin/smtpd")
    mail.add_link("/tmp/b", "/tmp/a")
    assert smtpd.match("/tmp/b") == Match("rx", "/tmp/b", "path", None)
    mail.add_link("/tmp/a", "/etc/smtpd/x")          # the name now holds another file
    assert smtpd.match("/tmp/a") == Match("r", "/tmp/a", "path", None)
    mail.drop_link("/tmp/a")
    assert smtpd.match("/tmp/a") == Match("", "/", "default", None)
    assert smtpd.match("/tmp/b").perm == "rx"


def test_drop_link_never_removes_policy_rules(mail):
    mail.drop_link("/usr/sbin/smtpd")
    mail.drop_link("/never/linked")
    assert mail.pea("smtpd").match("/usr/sbin/smtpd").perm == "rx"


def test_link_onto_root_is_refused(mail):
    with pytest.raises(ValueError):
        mail.add_link("/", "/etc/x")
    with pytest.raises(ValueError):
        mail.add_link("/x/../y", "/etc/x")


def test_links_round_trip_through_json(mail):
    mail.add_link("/var/spool/smtpd/pm", "/usr/bin/procmail")
    mail.add_link("/tmp/c", "/etc/smtpd/c")
    saved = json.loads(json.dumps(mail.links()))
    assert saved == {
        "/var/spool/smtpd/pm": {"smtpd": {"perm": "rx", "exec_to": "delivery"},
                                "delivery": {"perm": "r", "exec_to": None}},
        "/tmp/c": {"smtpd": {"perm": "r", "exec_to": None},
                   "delivery": {"perm": "r", "exec_to": None}},
    }
    fresh = policy_of(MAIL)
    fresh.restore_links(saved)
    assert fresh.links() == mail.links()
    for pea in ("smtpd", "delivery"):
        for path in ("/var/spool/smtpd/pm", "/tmp/c", "/tmp/d"):
            assert fresh.pea(pea).match(path) == mail.pea(pea).match(path)
    # restore replaces: links not in the data go away
    fresh.restore_links({})
    assert fresh.links() == {}
    assert fresh.pea("smtpd").match("/tmp/c") == Match("", "/", "default", None)


@pytest.mark.parametrize("data", [
    [],
    {"/x": {"nobody": {"perm": "r", "exec_to": None}}},
    {"/x": {"smtpd": {"perm": "rr", "exec_to": None}}},
    {"/x": {"smtpd": {"perm": "wr", "exec_to": None}}},
    {"/x": {"smtpd": {"perm": "r", "exec_to": "nobody"}}},
    {"/x": {"smtpd": {"perm": "r"}}},
    {"/x": {"smtpd": "r"}},
    {"x": {"smtpd": {"perm": "r", "exec_to": None}}},
    {"/a/../b": {"smtpd": {"perm": "r", "exec_to": None}}},
    {"/": {"smtpd": {"perm": "r", "exec_to": None}}},
])
def test_restore_links_refuses_bad_data_and_changes_nothing(mail, data):
    mail.add_link("/tmp/keep", "/usr/sbin/smtpd")
    before = mail.links()
    with pytest.raises(ValueError):
        mail.restore_links(data)
    assert mail.links() == before
    assert mail.pea("smtpd").match("/tmp/keep").perm == "rx"


def test_dropping_links_leaves_no_empty_directories_behind(mail):
    smtpd = mail.pea("smtpd")
    before = set(smtpd._root.children)
    mail.add_link("/tmp/a/b/c/link", "/usr/sbin/smtpd")
    assert "tmp" in smtpd._root.children
    mail.drop_link("/tmp/a/b/c/link")
    assert set(smtpd._root.children) == before
    # a policy directory keeps its node
    mail.add_link("/etc/smtpd/link", "/usr/sbin/smtpd")
    mail.drop_link("/etc/smtpd/link")
    assert smtpd.match("/etc/smtpd/x") == Match("r", "/etc/smtpd/", "directory", None)
