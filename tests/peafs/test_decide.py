"""The pure decision core (peafs/decide.py), in-process: no root, no mount.

Each operation kind against a small policy, with the exact errno and audit
records, and properties over generated policies, paths and flags against
the rule engine (rules/): the core must add nothing to what the engine
grants but the combination (the letters an operation needs, the
intersection over an object's names, the order of checks, complain mode).
The mounted tests (test_rules_ops.py, the attack tests) prove the adapters
and the kernel facts; what is decided here is covered here.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

import rules
from peafs import decide
from peafs.decide import ALLOW, Record, Verdict
from peafs.ids import OVERFLOW_ID

REPO = Path(__file__).resolve().parents[2]
REG, DIR, LNK = stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK
FIFO, SOCK = stat.S_IFIFO, stat.S_IFSOCK

POLICY = r'''
[pod]
name = "t"
root = "/r"
default_pea = "p"

[pea.p.files]
"/" = "r"
"/ro/" = "r"
"/rw" = "rw"
"/rw/" = "rw"
"/rw/locked" = "r"
"/none/" = ""
"/bin/" = "rx"
"/bin/ls" = "x"
"/cgi/" = "rx"
"/wo/" = "w"
"/pipes/" = "r"
"/pipes/rw" = "rw"

[pea.p.exec]
"/cgi/" = "cgi"
"/bin/self" = "p"

[pea.cgi.files]
"/" = "rx"

[pea.learn]
complain = true

[pea.learn.files]
"/ro/" = "r"
'''


@pytest.fixture(scope="module")
def policy():
    return rules.loads(POLICY)


@pytest.fixture(scope="module")
def p(policy):
    return policy.pea("p")


@pytest.fixture(scope="module")
def learn(policy):
    return policy.pea("learn")


def P(path: str) -> tuple[str, ...]:
    """Path components, as the inode table gives them."""
    return tuple(path.strip("/").split("/")) if path != "/" else ()


def paths(*names):
    return [P(n) for n in names]


def refusal(pea, op, path, need, rule, kind, complain=False, error=errno.EACCES):
    return Verdict(error, (Record(pea, op, path, need, rule, kind, complain),))


# -- the module's purity ----------------------------------------------------

FORBIDDEN = {"os", "posix", "io", "pyfuse3", "trio", "socket", "subprocess", "ctypes",
             "threading", "pathlib", "shutil", "select", "fcntl", "kernel.procfs",
             "kernel.cgroup", "peafs.enforce", "peafs.fs", "peafs.inodes", "peafs.syscalls"}


def imports_of(path: Path, package: str) -> set[str]:
    """Absolute names of the modules a source file imports."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module
            out.add(mod)
            # ``from kernel import idmap`` imports a module too.
            out |= {f"{mod}.{a.name}" for a in node.names
                    if (REPO / mod.replace(".", "/") / f"{a.name}.py").exists()}
    return out


def test_decide_imports_nothing_that_does_io():
    # Every module decide.py reaches, transitively within the project.
    todo, seen = ["peafs.decide"], set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        file = REPO / (mod.replace(".", "/") + ".py")
        if not file.exists():
            file = REPO / mod.replace(".", "/") / "__init__.py"
        if not file.exists():
            continue            # the standard library
        for name in imports_of(file, mod.rsplit(".", 1)[0]):
            assert name not in FORBIDDEN and name.split(".")[0] not in FORBIDDEN, (mod, name)
            todo.append(name)
    assert seen >= {"peafs.decide", "peafs.ids", "kernel.idmap"}
    assert seen - {"peafs.decide", "peafs.ids", "kernel.idmap"} <= {
        "__future__", "errno", "stat", "typing", "peafs", "kernel"}


def test_importing_decide_loads_no_fuse_nor_trio():
    code = ("import sys, peafs.decide\n"
            "print(sorted(m for m in ('pyfuse3', 'trio', 'peafs.enforce', 'peafs.fs', "
            "'peafs.inodes', 'kernel.procfs', 'kernel.cgroup') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=True).stdout
    assert out.strip() == "[]"


def test_flag_constants_are_this_kernels():
    assert decide.O_ACCMODE == os.O_ACCMODE
    assert (decide.O_RDONLY, decide.O_WRONLY, decide.O_RDWR) == (os.O_RDONLY, os.O_WRONLY,
                                                                  os.O_RDWR)
    assert decide.O_TRUNC == os.O_TRUNC
    assert (decide.R_OK, decide.W_OK, decide.X_OK) == (os.R_OK, os.W_OK, os.X_OK)
    # __FMODE_EXEC must not collide with a flag an open may carry.
    assert not decide.FMODE_EXEC & (os.O_ACCMODE | os.O_TRUNC | os.O_CREAT | os.O_APPEND)


def test_a_verdict_is_immutable_and_allow_is_shared(p):
    with pytest.raises(AttributeError):
        ALLOW.error = 13
    assert decide.open_file(p, paths("/ro/f"), os.O_RDONLY, REG) is ALLOW
    assert decide.check(p, "open", "r", paths("/ro/f", "/rw/f")) is ALLOW
    assert ALLOW.allowed and not decide.EACCES.allowed


# -- read, write, open ---------------------------------------------------------

@pytest.mark.parametrize("flags, need", [
    (os.O_RDONLY, "r"), (os.O_WRONLY, "w"), (os.O_RDWR, "rw"),
    (os.O_RDONLY | os.O_TRUNC, "rw"), (os.O_WRONLY | os.O_TRUNC, "w"),
    (os.O_ACCMODE, ""), (os.O_ACCMODE | os.O_TRUNC, "w"),
    (os.O_RDONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC, "r"),
    (os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, "w"),
])
def test_the_letters_an_open_needs(flags, need):
    assert decide.need_for_open(flags) == need


def test_read(p):
    assert decide.open_file(p, paths("/ro/f"), os.O_RDONLY, REG) is ALLOW
    assert decide.open_file(p, paths("/none/f"), os.O_RDONLY, REG) == refusal(
        "p", "open", "/none/f", "r", "/none/", "directory")
    assert decide.opendir(p, paths("/ro")) is ALLOW       # "/" = "r" covers /ro itself
    assert decide.opendir(p, paths("/none/d")) == refusal(
        "p", "opendir", "/none/d", "r", "/none/", "directory")


def test_write(p):
    assert decide.open_file(p, paths("/rw/f"), os.O_RDWR, REG) is ALLOW
    assert decide.open_file(p, paths("/rw/locked"), os.O_WRONLY, REG) == refusal(
        "p", "open", "/rw/locked", "w", "/rw/locked", "path")
    # A truncation is a write, whatever the access mode.
    assert decide.open_file(p, paths("/ro/f"), os.O_RDONLY | os.O_TRUNC, REG) == refusal(
        "p", "open", "/ro/f", "w", "/ro/", "directory")
    # Only the letters missing are logged.
    assert decide.open_file(p, paths("/wo/f"), os.O_RDWR, REG) == refusal(
        "p", "open", "/wo/f", "r", "/wo/", "directory")
    assert decide.set_attributes(p, paths("/rw/f")) is ALLOW
    assert decide.set_attributes(p, paths("/ro/f")) == refusal(
        "p", "setattr", "/ro/f", "w", "/ro/", "directory")


def test_objects_the_kernel_opens_itself_are_never_opened_here(p):
    for fmt in (FIFO, SOCK, LNK):
        assert decide.open_file(p, paths("/rw/x"), os.O_RDONLY, fmt) == decide.EACCES
        assert decide.openable(fmt) == decide.EACCES
    assert decide.openable(REG) is ALLOW and decide.openable(DIR) is ALLOW


def test_a_hard_link_is_judged_by_every_name(p):
    # The same object as /rw/f (writable) and /ro/f (read-only): no write.
    both = paths("/rw/f", "/ro/f")
    assert decide.open_file(p, both, os.O_WRONLY, REG) == refusal(
        "p", "open", "/ro/f", "w", "/ro/", "directory")
    assert decide.open_file(p, both, os.O_RDONLY, REG) is ALLOW
    assert decide.granted(p, both) == "r"
    assert decide.granted(p, []) == ""


def test_an_object_without_a_known_path_is_refused(p, learn):
    assert decide.check(p, "open", "r", []) == refusal(
        "p", "open", "?", "r", "object has no known path", "barrier")
    v = decide.check(learn, "open", "r", [])
    assert v.allowed and v.audit[0].complain


# -- the barrier -------------------------------------------------------------------

def test_an_outsider_is_refused_everything():
    barrier = decide.BARRIER
    assert decide.open_file(None, paths("/ro/f"), os.O_RDONLY, REG) == refusal(
        None, "open", "/ro/f", "", barrier, "barrier")
    assert decide.create(None, paths("/rw"), paths("/rw/n"), os.O_WRONLY) == refusal(
        None, "create", "/rw", "", barrier, "barrier")
    assert decide.rename_dirs(None, paths("/rw"), paths("/ro")) == refusal(
        None, "rename", "/rw", "", barrier, "barrier")
    assert decide.link(None, paths("/rw"), paths("/ro/f")) == refusal(
        None, "link", "/rw", "", barrier, "barrier")
    assert decide.mknod(None, paths("/rw"), stat.S_IFCHR) == refusal(
        None, "mknod", "/rw", "", barrier, "barrier")
    assert decide.exec_open(None, paths("/bin/ls")) == refusal(
        None, "exec", "/bin/ls", "", barrier, "barrier")
    for op in ("lookup", "readlink", "listxattr"):
        assert decide.see(None, op) == refusal(None, op, "", "", barrier, "barrier")
    assert decide.check(None, "open", "r", []) == refusal(None, "open", "", "", barrier,
                                                           "barrier")


def test_seeing_needs_a_pea_but_no_letter(p, policy):
    pea = policy.pea("cgi")
    assert decide.see(p, "lookup") is ALLOW and decide.see(pea, "readlink") is ALLOW


def test_an_outsider_sees_the_mount_root_and_nothing_else(p):
    assert decide.get_attributes(None, True) is ALLOW
    assert decide.get_attributes(None, False) == decide.outsider("getattr")
    assert decide.get_attributes(p, False) is ALLOW


# -- names in directories ---------------------------------------------------------

def test_create(p):
    assert decide.create(p, paths("/rw"), paths("/rw/n"), os.O_WRONLY | os.O_CREAT) is ALLOW
    assert decide.create(p, paths("/ro"), paths("/ro/n"), os.O_WRONLY) == refusal(
        "p", "create", "/ro", "w", "/", "directory")
    # A write-only directory: the new file may be created write-only, not read.
    assert decide.create(p, paths("/wo"), paths("/wo/n"), os.O_WRONLY) == refusal(
        "p", "create", "/wo", "w", "/", "directory")
    assert decide.create(p, paths("/rw"), paths("/rw/locked"), os.O_RDWR) == refusal(
        "p", "create", "/rw/locked", "w", "/rw/locked", "path")


def test_make_and_mknod(p, policy):
    assert decide.make(p, "mkdir", paths("/rw")) is ALLOW
    assert decide.make(p, "symlink", paths("/ro")) == refusal(
        "p", "symlink", "/ro", "w", "/", "directory")
    assert decide.mknod(p, paths("/rw"), stat.S_IFIFO | 0o644) is ALLOW
    assert decide.mknod(p, paths("/ro"), stat.S_IFIFO) == refusal(
        "p", "mknod", "/ro", "w", "/", "directory")
    # Device nodes: EPERM for everyone, a pea that may do anything included.
    rwx = policy.pea("cgi")
    assert decide.mknod(rwx, paths("/x"), stat.S_IFCHR | 0o666) == refusal(
        "cgi", "mknod", "/x", "w", "/", "directory")
    for kind in (stat.S_IFCHR, stat.S_IFBLK):
        assert decide.mknod(p, paths("/rw"), kind | 0o600) == decide.EPERM


def test_unlink_and_rmdir(p):
    assert decide.remove(p, "unlink", paths("/rw")) is ALLOW
    assert decide.remove(p, "rmdir", paths("/ro")) == refusal(
        "p", "rmdir", "/ro", "w", "/", "directory")
    # The entry itself needs w, by every name its object has.
    entry = decide.entry_paths(paths("/rw/f"), paths("/rw/f", "/ro/g"))
    assert entry == paths("/rw/f", "/ro/g")
    assert decide.remove_entry(p, "unlink", entry) == refusal(
        "p", "unlink", "/ro/g", "w", "/ro/", "directory")
    assert decide.remove_entry(p, "unlink", paths("/rw/locked")) == refusal(
        "p", "unlink", "/rw/locked", "w", "/rw/locked", "path")


def test_entry_paths_keep_the_names_first_and_add_each_other_once():
    assert decide.entry_paths(paths("/a/x", "/b/x"), paths("/b/x", "/c", "/c")) == paths(
        "/a/x", "/b/x", "/c")
    assert decide.entry_paths(paths("/a/x"), []) == paths("/a/x")


def test_rename(p):
    assert decide.rename_dirs(p, paths("/rw"), paths("/rw/sub")) is ALLOW
    # Moving out of a directory writes it as surely as moving in.
    assert decide.rename_dirs(p, paths("/ro"), paths("/rw")) == refusal(
        "p", "rename", "/ro", "w", "/", "directory")
    assert decide.rename_dirs(p, paths("/rw"), paths("/ro")) == refusal(
        "p", "rename", "/ro", "w", "/", "directory")
    assert decide.rename_entry(p, paths("/rw/locked")) == refusal(
        "p", "rename", "/rw/locked", "w", "/rw/locked", "path")
    assert decide.rename_entry(p, paths("/rw/a")) is ALLOW


def test_link(p):
    assert decide.link(p, paths("/rw"), paths("/ro/f")) is ALLOW
    assert decide.link(p, paths("/ro"), paths("/rw/f")) == refusal(
        "p", "link", "/ro", "w", "/", "directory")
    # Some letter on the original, granted by each of its names (the
    # intersection, as for any access), else no new name for it.
    assert decide.link(p, paths("/rw"), paths("/none/secret")) == refusal(
        "p", "link", "/none/secret", "rwx", "no access to the original", "link")
    assert decide.link(p, paths("/rw"), paths("/ro/f", "/none/f")) == refusal(
        "p", "link", "/ro/f", "rwx", "no access to the original", "link")
    # An original with no known name (a bug): refused, nothing to log.
    assert decide.link(p, paths("/rw"), []) == decide.EACCES


# -- xattrs and access -----------------------------------------------------------------

def test_xattrs(p):
    assert decide.getxattr(p, paths("/ro/f"), REG) is ALLOW
    assert decide.getxattr(p, paths("/ro/f"), LNK) == decide.ENODATA
    assert decide.getxattr(p, paths("/none/f"), REG) == refusal(
        "p", "getxattr", "/none/f", "r", "/none/", "directory")
    assert decide.xattr_write(p, "setxattr", paths("/rw/f"), b"user.x", REG) is ALLOW
    for name in (b"trusted.x", b"security.capability", b"system.posix_acl_access"):
        assert decide.xattr_write(p, "setxattr", paths("/rw/f"), name, REG) == decide.EPERM
    assert decide.xattr_write(p, "removexattr", paths("/rw/f"), b"user.x", LNK) == decide.EPERM
    assert decide.xattr_write(p, "removexattr", paths("/ro/f"), b"user.x", REG) == refusal(
        "p", "removexattr", "/ro/f", "w", "/ro/", "directory")


def test_access(p, learn):
    assert decide.access(p, paths("/rw/f"), os.R_OK | os.W_OK, False)
    assert not decide.access(p, paths("/ro/f"), os.W_OK, False)
    assert not decide.access(p, paths("/ro/f"), os.X_OK, False)
    assert decide.access(p, paths("/ro/d"), os.X_OK, True)     # walking is seeing
    assert decide.access(p, paths("/bin/ls"), os.X_OK, False)
    assert decide.access(learn, paths("/none"), os.W_OK, False)    # complain


# -- exec and transitions -------------------------------------------------------------

def test_exec_needs_x(p):
    assert decide.exec_open(p, paths("/bin/ls")) is ALLOW
    assert decide.exec_open(p, paths("/ro/sh")) == refusal(
        "p", "exec", "/ro/sh", "x", "/ro/", "directory")


def test_exec_transition_target(p):
    assert decide.exec_open(p, paths("/cgi/run")) == Verdict(0, (), "cgi")
    # A transition to the pea itself is none.
    assert decide.exec_open(p, paths("/bin/self")) is ALLOW
    # Two names that agree.
    assert decide.exec_open(p, paths("/cgi/a", "/cgi/b")).target == "cgi"


def test_names_leading_to_different_peas_are_refused(p, learn):
    ambiguous = Record("p", "exec", "/cgi/run", "x", "ambiguous transition (hard links)",
                       "link", False)
    assert decide.exec_open(p, paths("/cgi/run", "/bin/ls")) == Verdict(errno.EACCES,
                                                                          (ambiguous,))


def test_transition_facts_in_order():
    ok = dict(watched=True, stage="main", threads="1", tracer="0", guard=None)
    assert decide.transition("p", "/cgi/run", **ok) is ALLOW
    assert decide.transition("p", "/x", **{**ok, "stage": "interp"}) is ALLOW

    def why(**facts):
        v = decide.transition("p", "/cgi/run", **{**ok, **facts})
        assert v.error == errno.EACCES and len(v.audit) == 1
        rec = v.audit[0]
        assert (rec.pea, rec.operation, rec.path, rec.need, rec.kind, rec.complain) == (
            "p", "exec", "/cgi/run", "x", "transition", False)
        return rec.rule

    assert why(watched=False, stage=None) == "transitions are off (no exec watch)"
    assert why(stage="elf_interp").startswith("transition on an ELF interpreter")
    assert why(stage=None).startswith("transition on an ELF interpreter")
    assert why(threads="2") == decide.THREADED
    assert why(threads=None) == decide.THREADED        # status unreadable: fail safe
    assert why(tracer="42") == "a traced process cannot change pea"
    assert why(guard="a signal is armed") == "cannot change pea: a signal is armed"
    # The first fact that fails is the one logged.
    assert why(stage="elf_interp", threads="3").startswith("transition on an ELF")
    assert why(threads="3", tracer="1") == decide.THREADED


# -- complain mode ---------------------------------------------------------------------

def test_complain_mode_lets_rules_through_and_logs_each(learn):
    v = decide.open_file(learn, paths("/a", "/ro/f", "/b"), os.O_RDWR, REG)
    assert v.allowed
    assert [(r.path, r.need, r.rule, r.complain) for r in v.audit] == [
        ("/a", "rw", "/", True), ("/ro/f", "w", "/ro/", True), ("/b", "rw", "/", True)]
    # Checks made in turn keep their order.
    v = decide.create(learn, paths("/d"), paths("/d/n"), os.O_WRONLY)
    assert v.allowed and [(r.path, r.need) for r in v.audit] == [("/d", "w"), ("/d/n", "w")]
    v = decide.rename_dirs(learn, paths("/x"), paths("/y"))
    assert v.allowed and [r.path for r in v.audit] == ["/x", "/y"]
    v = decide.link(learn, paths("/d"), paths("/secret"))
    assert v.allowed and [(r.path, r.kind) for r in v.audit] == [("/d", "default"),
                                                                  ("/secret", "link")]
    v = decide.exec_open(learn, paths("/bin/sh"))
    assert v.allowed and v.audit[0].need == "x" and v.target is None


def test_complain_mode_does_not_cover_what_is_not_a_rule(learn):
    # A device node, an xattr namespace, an object type: refused, the rule
    # records still logged.
    v = decide.mknod(learn, paths("/d"), stat.S_IFBLK)
    assert v.error == errno.EPERM and v.audit[0].complain
    v = decide.xattr_write(learn, "setxattr", paths("/f"), b"trusted.x", REG)
    assert v.error == errno.EPERM and v.audit[0].complain
    v = decide.open_file(learn, paths("/f"), os.O_RDONLY, FIFO)
    assert v.error == errno.EACCES and v.audit[0].complain
    assert decide.transition("learn", "/x", watched=False).error == errno.EACCES
    assert decide.over_share("learn", "open", paths("/f"), 10).error == errno.ENFILE


def test_complain_mode_still_refuses_an_ambiguous_transition(policy):
    learn2 = rules.loads(POLICY.replace('[pea.learn.files]', '[pea.learn.exec]\n"/cgi/" = "cgi"\n'
                                        '[pea.learn.files]')).pea("learn")
    v = decide.exec_open(learn2, paths("/cgi/run", "/bin/ls"))
    assert v.error == errno.EACCES
    assert [(r.path, r.complain, r.kind) for r in v.audit] == [
        ("/cgi/run", True, "default"), ("/bin/ls", True, "default"),
        ("/cgi/run", False, "link")]


# -- FIFOs and sockets ------------------------------------------------------------------

HOST = 200000


def special(pea, path, fmt=FIFO, mode=0o660, uid=HOST + 1, gid=HOST + 1, cuid=HOST + 1,
            cgid=HOST + 1, vuid=1):
    return decide.special(pea, paths(path), fmt, fmt | mode, uid, gid, cuid, cgid, vuid)


def test_a_pea_with_rw_sees_the_true_attributes(p):
    assert special(p, "/pipes/rw") == (ALLOW, None)


def test_a_pea_without_rw_gets_unix_and_pea(p):
    # Owner: rw- by Unix, r by the pea -> r--, owned by the overflow id.
    assert special(p, "/pipes/r") == (ALLOW, (FIFO | 0o004, OVERFLOW_ID, OVERFLOW_ID))
    # Group bits for a member of the group, other bits for anyone else.
    assert special(p, "/pipes/r", mode=0o604, cuid=HOST + 2)[1][0] == FIFO | 0o000
    assert special(p, "/pipes/r", mode=0o640, cuid=HOST + 2, cgid=HOST + 9)[1][0] == FIFO
    assert special(p, "/pipes/r", mode=0o604, cuid=HOST + 2, cgid=HOST + 9)[1][0] == FIFO | 4
    # Pod root has DAC override over mapped ids: only the pea limits it.
    assert special(p, "/pipes/r", mode=0o000, cuid=HOST, vuid=0)[1][0] == FIFO | 0o004
    # ... but not over an object owned by an unmapped id.
    assert special(p, "/pipes/r", mode=0o000, uid=OVERFLOW_ID, cuid=HOST,
                   vuid=0)[1][0] == FIFO
    # No letter at all: nothing.
    assert special(p, "/none/s", fmt=SOCK, mode=0o777)[1] == (SOCK, OVERFLOW_ID, OVERFLOW_ID)
    # Special bits never survive.
    assert special(p, "/pipes/r", mode=0o7666)[1][0] == FIFO | 0o004


def test_complain_mode_logs_the_special_refusal_and_answers_truly(learn):
    v, answer = special(learn, "/ro/fifo")
    assert answer is None and v.allowed
    assert v.audit == (Record("learn", "open", "/ro/fifo", "w", "/ro/", "directory", True),)
    v, answer = special(learn, "/x/sock", fmt=SOCK)
    assert answer is None and v.audit[0].operation == "connect" and v.audit[0].need == "rw"


def test_without_a_caller_the_answer_refuses():
    assert decide.refusing_answer(FIFO | 0o4777) == (FIFO, OVERFLOW_ID, OVERFLOW_ID)
    assert special(None, "/pipes/rw", mode=0o666) == (ALLOW, (FIFO, OVERFLOW_ID, OVERFLOW_ID))


def test_over_share():
    v = decide.over_share("p", "open", paths("/ro/f"), 12)
    assert v.error == errno.ENFILE
    assert v.audit[0][:4] == ("p", "open", "/ro/f", "") and v.audit[0].kind == "limit"
    assert "12 open files" in v.audit[0].rule
    assert decide.over_share("p", "open", [], 12).audit[0].path == "?"


# -- properties against the rule engine --------------------------------------------------

NAMES = ["a", "b", "c"]
rel = st.lists(st.sampled_from(NAMES), min_size=1, max_size=4)
rule_keys = st.one_of(st.just("/"), rel.map(lambda p: "/" + "/".join(p)),
                      rel.map(lambda p: "/" + "/".join(p) + "/"))
perms = st.sets(st.sampled_from("rwx")).map(lambda s: "".join(c for c in "rwx" if c in s))
objects = st.lists(rel.map(tuple), min_size=1, max_size=3, unique=True)
ACCESS = [os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_ACCMODE]
EXTRA = [0, os.O_TRUNC, os.O_APPEND, os.O_TRUNC | os.O_NONBLOCK, os.O_CREAT | os.O_EXCL]
flag_values = st.builds(lambda a, b: a | b, st.sampled_from(ACCESS), st.sampled_from(EXTRA))


@st.composite
def peas(draw, complain=False):
    files = draw(st.dictionaries(rule_keys, perms, max_size=10))
    execs = draw(st.dictionaries(rule_keys, st.sampled_from(["p", "q"]), max_size=4))
    lines = ['[pod]\nname = "t"\nroot = "/r"\ndefault_pea = "p"\n',
             f"[pea.p]\ncomplain = {'true' if complain else 'false'}",
             "[pea.p.files]"]
    lines += [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in files.items()]
    lines.append("[pea.p.exec]")
    lines += [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in execs.items()]
    lines.append("[pea.q.files]")
    return rules.loads("\n".join(lines) + "\n").pea("p")


def engine(pea, parts):
    """The rule engine's answer, by the string API (not the core's)."""
    return pea.match("/" + "/".join(parts))


def naive_need(flags):
    acc = flags & os.O_ACCMODE
    need = set()
    if acc in (os.O_RDONLY, os.O_RDWR):
        need.add("r")
    if acc in (os.O_WRONLY, os.O_RDWR) or flags & os.O_TRUNC:
        need.add("w")
    return need


@settings(max_examples=300, deadline=None)
@given(peas(), objects, flag_values)
def test_an_open_is_allowed_exactly_when_every_name_grants_its_letters(pea, names, flags):
    need = naive_need(flags)
    v = decide.open_file(pea, names, flags, REG)
    failing = [n for n in names if not need <= set(engine(pea, n).perm)]
    assert v.allowed == (not failing)
    if failing:
        m = engine(pea, failing[0])
        missing = "".join(c for c in "rwx" if c in need - set(m.perm))
        assert v == refusal("p", "open", decide.path_str(failing[0]), missing, m.rule, m.kind)
    else:
        assert v is ALLOW
    # One name at a time agrees: a hard link is allowed only if each is.
    assert v.allowed == all(decide.open_file(pea, [n], flags, REG).allowed for n in names)


@settings(max_examples=200, deadline=None)
@given(peas(complain=True), objects, flag_values)
def test_complain_mode_allows_and_logs_each_name_that_would_refuse(pea, names, flags):
    need = naive_need(flags)
    v = decide.open_file(pea, names, flags, REG)
    assert v.allowed
    assert [r.path for r in v.audit] == [decide.path_str(n) for n in names
                                         if not need <= set(engine(pea, n).perm)]
    assert all(r.complain and r.pea == "p" for r in v.audit)


@settings(max_examples=200, deadline=None)
@given(peas(), objects)
def test_granted_is_the_intersection(pea, names):
    want = set("rwx")
    for n in names:
        want &= set(engine(pea, n).perm)
    assert decide.granted(pea, names) == "".join(c for c in "rwx" if c in want)


@settings(max_examples=200, deadline=None)
@given(peas(), objects)
def test_exec_agrees_with_x_and_the_exec_table(pea, names):
    v = decide.exec_open(pea, names)
    has_x = all("x" in engine(pea, n).perm for n in names)
    targets = {pea.transition("/" + "/".join(n)) for n in names}
    if not has_x:
        assert v.error == errno.EACCES and v.audit[0].need == "x"
    elif len(targets) > 1:
        assert v.error == errno.EACCES and v.audit[-1].rule.startswith("ambiguous")
    else:
        target = targets.pop()
        assert v.allowed and v.target == (None if target in (None, "p") else target)


@settings(max_examples=200, deadline=None)
@given(peas(), objects, objects)
def test_link_needs_w_on_the_directory_and_a_letter_common_to_every_original_name(pea, dirs,
                                                                                   old):
    v = decide.link(pea, dirs, old)
    # What the pea may do to the object is the intersection over its names
    # (as for any access): r on one name and w on another is no access.
    common = set("rwx")
    for o in old:
        common &= set(engine(pea, o).perm)
    may = all("w" in engine(pea, d).perm for d in dirs) and bool(common)
    assert v.allowed == may


def test_link_to_an_object_whose_names_grant_different_letters_is_refused(policy):
    pea = rules.loads(POLICY.replace('"/wo/" = "w"', '"/wo/" = "w"\n"/ronly/" = "r"')).pea("p")
    # Written through one name, read through another: no letter in common.
    assert not decide.link(pea, paths("/rw"), paths("/wo/f", "/ronly/f")).allowed
