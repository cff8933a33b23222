"""Every validation error: its exact message and the exact line it names.

Each test feeds a policy with one kind of mistake (sometimes several at
once, to prove they are all reported together) and compares the complete
list of FILE:LINE: message strings.
"""

from __future__ import annotations

import textwrap

import pytest

import rules
from rules import source
from rules.policy import Service

from rules_helpers import MINIMAL, policy_of, problems_of

# -- the file as a whole ------------------------------------------------------


def test_not_toml_names_the_line_of_the_syntax_error():
    assert problems_of('[pod]\nname = "t"\nroot = \n') == [
        "p.toml:3: not valid TOML: Invalid value (column 8)"]


def test_unterminated_table_header():
    assert problems_of('[pod]\nname = "t"\n[pea.a\n') == [
        "p.toml:3: not valid TOML: Expected ']' at the end of a table declaration (column 7)"]


def test_duplicate_key_is_a_toml_error():
    assert problems_of('[pea.a.files]\n"/etc/" = "r"\n"/etc/" = "rw"\n') == [
        "p.toml:3: not valid TOML: Cannot overwrite a value (column 15)"]


def test_error_at_end_of_document_names_the_last_line():
    assert problems_of('[pod]\nname = "t"\nbind = [1,\n') == [
        "p.toml:3: not valid TOML: Invalid value (at the end of the file)"]


@pytest.mark.parametrize("text", ["", "\n\n   \n", "# only a comment\n\n# another\n"])
def test_empty_file(text):
    assert problems_of(text) == [
        "p.toml:1: empty policy: it needs a [pod] table and at least one [pea.NAME] table"]


def test_binary_file_is_refused_with_the_line_of_the_nul():
    assert problems_of(b'[pod]\nname = "t"\x00\n') == [
        "p.toml:2: is a binary file (NUL byte), not a policy"]


def test_non_utf8_file_is_refused_with_the_line_of_the_bad_byte():
    assert problems_of(b'[pod]\nname = "t"\nroot = "/srv/\xe9"\n') == [
        "p.toml:3: is not UTF-8 text (byte 0xe9)"]


def test_lone_surrogate_in_text_is_not_utf8():
    assert problems_of('[pod]\nname = "\udcff"\n') == [
        "p.toml:2: is not UTF-8 text (a lone surrogate character)"]


def test_byte_order_mark_is_accepted():
    policy = rules.loads("\ufeff" + MINIMAL)
    assert policy.name == "t"


def test_file_over_16_mib_is_refused_before_parsing(tmp_path, monkeypatch):
    def no_parsing(*a, **k):
        raise AssertionError("tomllib must not see a file over the limit")

    monkeypatch.setattr(source.tomllib, "loads", no_parsing)
    big = tmp_path / "big.toml"
    with open(big, "wb") as f:
        f.write(b"# x\n")
        f.truncate(16 * 1024 * 1024 + 1)
    with pytest.raises(rules.PolicyError) as caught:
        rules.load(big)
    assert [str(p) for p in caught.value.errors] == [
        f"{big}: policy file is too large (16777217 bytes; the limit is 16 MiB)"]
    assert caught.value.errors[0].line == 0


def test_text_over_16_mib_is_refused_by_loads(monkeypatch):
    monkeypatch.setattr(source.tomllib, "loads", lambda *a: pytest.fail("parsed"))
    assert problems_of(b"#" * (16 * 1024 * 1024 + 1)) == [
        "p.toml: policy file is too large (16777217 bytes; the limit is 16 MiB)"]
    # Characters that take several bytes each count as bytes.
    assert problems_of("#" + "é" * (8 * 1024 * 1024)) == [
        "p.toml: policy file is too large (16777217 bytes; the limit is 16 MiB)"]


def test_file_of_exactly_16_mib_is_parsed(tmp_path):
    path = tmp_path / "pod.toml"
    body = MINIMAL.encode()
    path.write_bytes(body + b"#" * (16 * 1024 * 1024 - len(body)))
    assert rules.load(path).name == "t"


def test_missing_file(tmp_path):
    with pytest.raises(rules.PolicyError) as caught:
        rules.load(tmp_path / "none.toml")
    assert str(caught.value) == f"{tmp_path}/none.toml: cannot read the policy: No such file or directory"


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(rules.PolicyError) as caught:
        rules.load(tmp_path)
    assert str(caught.value) == f"{tmp_path}: is a directory, not a policy file"


# -- unknown keys at every level -------------------------------------------------


def test_unknown_keys_at_every_level_are_all_reported():
    text = """\
        colour = "blue"
        [pod]
        name = "t"
        root = "/srv/t"
        rooot = "/srv/x"
        [[pod.mount]]
        host = "/usr"
        path = "/usr"
        ro = true
        [pod.net]
        address = "10.88.0.2/24"
        gateway = "10.88.0.1"
        [pod.limits]
        cpu = 2
        [pea.a]
        complains = true
        [pea.a.files]
        "/" = "r"
        [pea.a.net]
        listen = [25]
        """
    assert problems_of(text) == [
        'p.toml:1: unknown key "colour" at the top level (expected [pod] and [pea.NAME] tables)',
        'p.toml:5: unknown key "rooot" in [pod] (expected name, hostname, root, uid_map, '
        "gid_map, default_pea, init, service, mount, net, limits, accept_gaps)",
        'p.toml:9: unknown key "ro" in [[pod.mount]] #1 (expected host, path, rw)',
        'p.toml:12: unknown key "gateway" in [pod.net] (expected address, host)',
        'p.toml:14: unknown key "cpu" in [pod.limits] (expected memory, pids)',
        'p.toml:16: unknown key "complains" in [pea.a] (expected complain, files, exec, net, use)',
        'p.toml:20: unknown key "listen" in [pea.a.net] (expected connect, bind)',
    ]


def test_unknown_table_points_at_its_header():
    text = MINIMAL + "[pea.a.file]\n'/x' = 'r'\n"
    assert problems_of(text) == [
        'p.toml:7: unknown key "file" in [pea.a] (expected complain, files, exec, net, use)']


def test_unknown_key_written_as_a_dotted_key():
    text = MINIMAL + "[pea.b]\nnet.listen = [25]\nfiles.'/' = 'r'\n"
    text = text.replace('name = "t"', 'name = "t"\ndefault_pea = "a"')
    assert problems_of(text) == [
        'p.toml:9: unknown key "listen" in [pea.b.net] (expected connect, bind)']


# -- wrong types -------------------------------------------------------------


def test_wrong_types_everywhere():
    text = """\
        [pod]
        name = 7
        hostname = ["h"]
        root = true
        default_pea = 1
        init = "/sbin/init"
        uid_map = "0 100000 65536"
        net = "10.88.0.2/24"
        limits = 5
        [[pod.mount]]
        host = "/usr"
        path = "/usr"
        rw = "yes"
        [pea.a]
        complain = "no"
        exec = []
        [pea.a.files]
        "/" = 4
        [pea.a.net]
        connect = 1
        bind = 25
        [pea.b]
        files = "all"
        net = false
        [pea.c]
        [pea.c.exec]
        "/bin/x" = true
        """
    assert problems_of(text) == [
        "p.toml:2: pod.name must be a string, not an integer",
        "p.toml:3: pod.hostname must be a string, not an array",
        "p.toml:4: pod.root must be a string, not a boolean",
        "p.toml:5: pod.default_pea must be a string, not an integer",
        "p.toml:6: init must be a non-empty array of strings (program, then arguments)",
        "p.toml:7: uid_map must be an array of [inside, outside, count] entries, not a string",
        "p.toml:8: pod.net must be a table, not a string",
        "p.toml:9: pod.limits must be a table, not an integer",
        "p.toml:13: pod.mount[1].rw must be a boolean, not a string",
        "p.toml:15: pea.a.complain must be a boolean, not a string",
        "p.toml:16: pea.a.exec must be a table, not an array",
        'p.toml:18: permission of "/" must be a string of letters from "rwx", not an integer',
        "p.toml:20: pea.a.net.connect must be a boolean, not an integer",
        "p.toml:21: pea.a.net.bind must be an array of port numbers, not an integer",
        "p.toml:23: pea.b.files must be a table, not a string",
        "p.toml:24: pea.b.net must be a table, not a boolean",
        'p.toml:27: transition of "/bin/x" must name a pea (a string), not a boolean',
    ]


def test_mount_must_be_an_array_of_tables():
    text = MINIMAL.replace('root = "/srv/t"', 'root = "/srv/t"\nmount = {host = "/usr"}')
    assert problems_of(text) == [
        "p.toml:4: pod.mount must be an array of tables ([[pod.mount]]), not a table"]
    text = MINIMAL.replace('root = "/srv/t"', 'root = "/srv/t"\nmount = ["/usr"]')
    assert problems_of(text) == ["p.toml:4: pod.mount[1] must be a table, not a string"]


def test_pea_and_pod_must_be_tables():
    assert problems_of('pod = "t"\npea = 3\n') == [
        "p.toml:1: pod must be a table, not a string",
        "p.toml:2: pea must be a table of peas ([pea.NAME]), not an integer",
    ]
    text = MINIMAL.replace('name = "t"', 'name = "t"\ndefault_pea = "a"')
    assert problems_of(text + "[pea]\nb = 'x'\n") == [
        "p.toml:9: pea.b must be a table, not a string"]


# -- the pod ----------------------------------------------------------------


def test_missing_pod_table_is_reported_on_line_1():
    assert problems_of('[pea.a.files]\n"/" = "r"\n') == [
        "p.toml:1: missing [pod] table (name and root of the pod)"]


def test_missing_root_and_name_point_at_the_pod_header():
    text = '# policy\n\n[pod]\nhostname = "x"\n\n[pea.a]\n'
    assert problems_of(text) == [
        'p.toml:3: [pod] has no "name"',
        'p.toml:3: [pod] has no "root" (the staging directory of the pod)',
    ]


def test_missing_root_of_a_pod_defined_by_dotted_keys():
    assert problems_of('\npod.name = "t"\n[pea.a]\n') == [
        'p.toml:2: [pod] has no "root" (the staging directory of the pod)']


@pytest.mark.parametrize("name", ["Mail", "1mail", "mail_1", "-x", "", "a" * 32, "mail server"])
def test_pod_name_syntax(name):
    text = MINIMAL.replace('name = "t"', f'name = "{name}"')
    assert problems_of(text) == [
        f'p.toml:2: pod name "{name}" is not valid: use a lower-case letter, then up to 30 '
        'lower-case letters, digits or "-"']


@pytest.mark.parametrize("name", ["a", "mail", "a-1", "a" * 31])
def test_pod_names_that_are_fine(name):
    assert rules.loads(MINIMAL.replace('name = "t"', f'name = "{name}"')).name == name


@pytest.mark.parametrize("hostname", ["-mail", "mail_x", "a" * 64, "a.b.", "x..y", "a" * 40 + "." + "b" * 30])
def test_hostname_syntax(hostname):
    text = MINIMAL.replace('name = "t"', f'name = "t"\nhostname = "{hostname}"')
    assert problems_of(text) == [
        f'p.toml:3: hostname "{hostname}" is not valid: use letters, digits and "-" in '
        "dot-separated labels, 64 characters at most"]


def test_root_paths():
    for root, why in [
        ("/srv/../etc", 'contains a ".." component'),
        ("/srv/./t", 'contains a "." component'),
        ("/srv//t", 'contains an empty component ("//")'),
        ("../up", 'contains a ".." component'),
        ("", "is empty"),
        ("/srv/t ", 'has a component ending in white space ("t ")'),
    ]:
        text = MINIMAL.replace('root = "/srv/t"', f'root = "{root}"')
        assert problems_of(text) == [f'p.toml:3: root "{root}" {why}'], root
    text = MINIMAL.replace('root = "/srv/t"', 'root = "/"')
    assert problems_of(text) == ['p.toml:3: root "/" would make the whole host the pod\'s tree']


# -- id maps ---------------------------------------------------------------


def _with_map(line: str) -> str:
    return MINIMAL.replace('root = "/srv/t"', 'root = "/srv/t"\n' + line)


@pytest.mark.parametrize("value, message", [
    ("[]", "uid_map is empty: it needs at least the pod's root, like [[0, 100000, 65536]]"),
    ("[[0, 100000]]", "uid_map entry 1 must be [inside, outside, count] (three integers), not [0, 100000]"),
    ('[[0, 100000, "65536"]]', 'uid_map entry 1 must be [inside, outside, count] (three integers), not [0, 100000, "65536"]'),
    ("[[0, 100000, 1.5]]", "uid_map entry 1 must be [inside, outside, count] (three integers), not [0, 100000, 1.5]"),
    ("[[0, 100000, true]]", "uid_map entry 1 must be [inside, outside, count] (three integers), not [0, 100000, true]"),
    ("[0, 100000, 65536]", "uid_map must be an array of [inside, outside, count] entries, like [[0, 100000, 65536]]"),
    ("[[0, 100000, 0]]", "uid_map entry 1 has count 0; it must be at least 1"),
    ("[[-1, 100000, 5]]", "uid_map entry 1 has a negative id"),
    ("[[0, 0, 65536]]", "uid_map entry 1 maps host id 0 (the host's root) into the pod"),
    ("[[0, 4294967000, 65536]]", "uid_map entry 1 goes beyond the largest id, 4294967294"),
    ("[[0, 100000, 4294967295]]", "uid_map entry 1 goes beyond the largest id, 4294967294"),
    ("[[1, 100000, 10]]", "uid_map does not map pod id 0 (the pod's root)"),
])
def test_uid_map_entry_problems(value, message):
    assert problems_of(_with_map(f"uid_map = {value}")) == [f"p.toml:4: {message}"]


def test_every_bad_map_entry_is_reported():
    text = _with_map("uid_map = [\n  [0, 100000, 10],\n  [5, 0, 3],\n  [7, 200000, 0],\n]")
    assert problems_of(text) == [
        "p.toml:4: uid_map entry 2 maps host id 0 (the host's root) into the pod",
        "p.toml:4: uid_map entry 3 has count 0; it must be at least 1",
    ]


def test_overlapping_map_entries():
    text = _with_map("uid_map = [[0, 100000, 10], [5, 300000, 10], [100, 100009, 1]]")
    assert problems_of(text) == [
        "p.toml:4: uid_map entries 1 and 2 overlap inside the pod",
        "p.toml:4: uid_map entries 1 and 3 overlap on the host",
    ]


def test_adjacent_map_entries_are_fine():
    policy = rules.loads(_with_map("uid_map = [[0, 100000, 10], [10, 100010, 10]]"))
    assert policy.uid_map == (rules.IdRange(0, 100000, 10), rules.IdRange(10, 100010, 10))
    assert policy.gid_map == policy.uid_map


def test_gid_map_is_checked_on_its_own_line():
    text = _with_map("uid_map = [[0, 100000, 10]]\ngid_map = [[0, 0, 10]]")
    assert problems_of(text) == [
        "p.toml:5: gid_map entry 1 maps host id 0 (the host's root) into the pod"]


def test_too_many_map_entries():
    entries = ", ".join(f"[{i}, {100000 + i}, 1]" for i in range(341))
    assert problems_of(_with_map(f"uid_map = [{entries}]")) == [
        "p.toml:4: uid_map has 341 entries; the kernel takes at most 340"]


def test_default_maps():
    policy = rules.loads(MINIMAL)
    assert policy.uid_map == policy.gid_map == (rules.IdRange(0, 100000, 65536),)


# -- default_pea, init ------------------------------------------------------------


def test_default_pea_naming_no_pea():
    text = MINIMAL.replace('name = "t"', 'name = "t"\ndefault_pea = "smtpd"')
    assert problems_of(text) == ['p.toml:3: default_pea "smtpd" names no pea (peas: a)']


def test_default_pea_required_when_there_are_several():
    text = MINIMAL + "[pea.b]\n"
    assert problems_of(text) == [
        'p.toml:1: [pod] has no "default_pea" and there are several peas (a, b)']


def test_default_pea_naming_a_pea_with_errors_is_not_reported_twice():
    text = MINIMAL.replace('name = "t"', 'name = "t"\ndefault_pea = "a"').replace('"r"', '"q"')
    assert problems_of(text) == [
        'p.toml:7: permission "q" of "/" has a letter other than r, w, x: "q"']


def test_init_problems():
    for value, message in [
        ("[]", "init must be a non-empty array of strings (program, then arguments)"),
        ('["/bin/x", 3]', "init must be a non-empty array of strings (program, then arguments)"),
        ('["sbin/init"]', 'init program "sbin/init" is relative (it must start with /)'),
        ('["/sbin/"]', 'init program "/sbin/" ends with / (name the program)'),
        ('["/sbin/init", "a\\u0000b"]', "init argument contains a NUL character"),
    ]:
        text = MINIMAL.replace('root = "/srv/t"', f'root = "/srv/t"\ninit = {value}')
        assert problems_of(text) == [f"p.toml:4: {message}"], value


# -- mounts, net, limits -----------------------------------------------------------


def test_mount_problems_point_at_the_right_entry():
    text = MINIMAL + """\
[[pod.mount]]
host = "/usr"
path = "/usr"

[[pod.mount]]
path = "/lib"

[[pod.mount]]
host = "/"
path = "/usr/"

[[pod.mount]]
host = "/srv/../etc"
path = "/"
"""
    assert problems_of(text) == [
        'p.toml:11: [[pod.mount]] #2 has no "host" (host directory)',
        'p.toml:15: mount host "/" would show the whole host in the pod',
        'p.toml:16: mount path "/usr" is already used by [[pod.mount]] #1',
        'p.toml:19: mount host "/srv/../etc" contains a ".." component',
        'p.toml:20: mount path "/" would hide the pod\'s own root',
    ]


def test_mount_as_inline_tables_points_at_each_key():
    text = MINIMAL.replace('root = "/srv/t"', 'root = "/srv/t"\nmount = [\n'
                           '  {host = "/usr", path = "/usr"},\n'
                           '  {host = "lib", path = "/lib"},\n'
                           '  {path = "/bin"},\n]')
    assert problems_of(text) == [
        'p.toml:6: mount host "lib" is relative (it must start with /)',
        'p.toml:7: [[pod.mount]] #3 has no "host" (host directory)',
    ]


@pytest.mark.parametrize("address, message", [
    ("10.88.0.2", 'address "10.88.0.2" has no prefix length (like "10.88.0.2/24")'),
    ("10.88.0.300/24", 'address "10.88.0.300/24" is not an IP address with a prefix length (like "10.88.0.2/24")'),
    ("mail/24", 'address "mail/24" is not an IP address with a prefix length (like "10.88.0.2/24")'),
    ("10.88.0.1/24", 'address "10.88.0.1/24" is the host side\'s address (the first address of 10.88.0.0/24)'),
    ("10.88.0.0/24", 'address "10.88.0.0/24" is not a host address of 10.88.0.0/24'),
    ("10.88.0.255/24", 'address "10.88.0.255/24" is not a host address of 10.88.0.0/24'),
    ("10.88.0.2/31", 'network 10.88.0.2/31 of address "10.88.0.2/31" has no room for the host side and the pod'),
])
def test_net_address(address, message):
    text = MINIMAL + f'[pod.net]\naddress = "{address}"\n'
    assert problems_of(text) == [f"p.toml:8: {message}"]


def test_net_without_address():
    assert problems_of(MINIMAL + "[pod.net]\n") == [
        'p.toml:7: [pod.net] has no "address" (like "10.88.0.2/24")']


def test_limits():
    text = MINIMAL + '[pod.limits]\nmemory = "lots"\npids = "many"\n'
    assert problems_of(text) == [
        'p.toml:8: memory "lots" is not a size (bytes, or a number followed by K, M or G, like "256M")',
        "p.toml:9: pod.limits.pids must be an integer, not a string",
    ]
    text = MINIMAL + '[pod.limits]\nmemory = "512K"\npids = 0\n'
    assert problems_of(text) == [
        'p.toml:8: memory "512K" is below 1M, too little to run anything',
        "p.toml:9: pids 0 must be at least 1",
    ]


# -- peas, files, exec, net ---------------------------------------------------


def test_no_peas():
    assert problems_of('[pod]\nname = "t"\nroot = "/r"\n') == [
        "p.toml:1: no peas: add at least one [pea.NAME] table"]
    assert problems_of('pea = {}\n[pod]\nname = "t"\nroot = "/r"\n') == [
        "p.toml:1: no peas: add at least one [pea.NAME] table"]


@pytest.mark.parametrize("name", ["Smtpd", "smtp_d", "1x", "a" * 32])
def test_pea_name_syntax(name):
    text = MINIMAL + f'[pea."{name}"]\n'
    text = text.replace('name = "t"', 'name = "t"\ndefault_pea = "a"')
    assert problems_of(text) == [
        f'p.toml:8: pea name "{name}" is not valid: use a lower-case letter, then up to 30 '
        'lower-case letters, digits or "-"']


BAD_PATHS = [
    ("etc/passwd", "is relative (it must start with /)"),
    ("/etc/../shadow", 'contains a ".." component'),
    ("/etc/./shadow", 'contains a "." component'),
    ("/etc/..", 'contains a ".." component'),
    ("/etc//shadow", 'contains an empty component ("//")'),
    ("//", 'contains an empty component ("//")'),
    ("/etc/shadow ", 'has a component ending in white space ("shadow ")'),
    ("/etc /shadow", 'has a component ending in white space ("etc ")'),
    ("/var/mail\\t/", "contains a control character"),
    ("/etc/a\\u0000b", "contains a NUL character"),
    ("", "is empty"),
    ("/" + "a" * 256, "has a component longer than 255 bytes"),
    ("/a" * 2048, "is longer than 4095 bytes"),
]


@pytest.mark.parametrize("path, why", BAD_PATHS)
def test_bad_file_rule_paths(path, why):
    text = MINIMAL + f'"{path}" = "r"\n'
    shown = path.replace("\\t", "\\t").replace("\\u0000", "\\u0000")
    assert problems_of(text) == [f'p.toml:7: file rule "{shown}" {why}']


@pytest.mark.parametrize("path, why", BAD_PATHS[:8])
def test_bad_transition_paths(path, why):
    text = MINIMAL + f'[pea.a.exec]\n"{path}" = "a"\n'
    assert problems_of(text) == [f'p.toml:8: transition "{path}" {why}']


@pytest.mark.parametrize("perm, message", [
    ("rwz", 'permission "rwz" of "/x" has a letter other than r, w, x: "z"'),
    ("R", 'permission "R" of "/x" has a letter other than r, w, x: "R"'),
    ("r w", 'permission "r w" of "/x" has a letter other than r, w, x: " "'),
    ("read", 'permission "read" of "/x" has letters other than r, w, x: "ade"'),
    ("rr", 'permission "rr" of "/x" repeats "r"'),
    ("rwxwx", 'permission "rwxwx" of "/x" repeats "wx"'),
])
def test_bad_permissions(perm, message):
    assert problems_of(MINIMAL + f'"/x" = "{perm}"\n') == [f"p.toml:7: {message}"]


def test_permissions_in_any_order_are_normalised():
    policy = rules.loads(MINIMAL + '"/x" = "xr"\n"/y" = "wxr"\n"/z" = ""\n')
    assert dict(policy.pea("a").files) == {"/": "r", "/x": "rx", "/y": "rwx", "/z": ""}


def test_transition_to_unknown_pea():
    text = MINIMAL + '[pea.a.exec]\n"/usr/bin/procmail" = "delivery"\n"/usr/lib/cgi-bin/" = "cgi"\n'
    assert problems_of(text) == [
        'p.toml:8: transition of "/usr/bin/procmail" goes to unknown pea "delivery" (peas: a)',
        'p.toml:9: transition of "/usr/lib/cgi-bin/" goes to unknown pea "cgi" (peas: a)',
    ]


@pytest.mark.parametrize("ports, messages", [
    ("[0]", ["bind port 0 is outside 1-65535"]),
    ("[65536]", ["bind port 65536 is outside 1-65535"]),
    ("[-25]", ["bind port -25 is outside 1-65535"]),
    ('["25"]', ['bind port "25" is not an integer']),
    ("[25.0]", ["bind port 25.0 is not an integer"]),
    ("[25, 25]", ["bind port 25 is listed twice"]),
    ("[0, 25, 99999]", ["bind port 0 is outside 1-65535", "bind port 99999 is outside 1-65535"]),
])
def test_bind_ports(ports, messages):
    text = MINIMAL + f"[pea.a.net]\nconnect = true\nbind = {ports}\n"
    assert problems_of(text) == [f"p.toml:9: {m}" for m in messages]


def test_bind_ports_that_are_fine():
    pea = rules.loads(MINIMAL + "[pea.a.net]\nbind = [1, 25, 65535]\n").pea("a")
    assert pea.bind == frozenset({1, 25, 65535})
    assert pea.connect is False


def test_problems_come_in_file_order_from_every_part_at_once():
    text = """\
        [pea.smtpd.files]
        "/etc/../x" = "r"
        [pod]
        name = "Bad"
        root = "rel/../x"
        default_pea = "nobody"
        [pea.smtpd.net]
        bind = [0]
        """
    assert problems_of(text) == [
        'p.toml:2: file rule "/etc/../x" contains a ".." component',
        'p.toml:4: pod name "Bad" is not valid: use a lower-case letter, then up to 30 '
        'lower-case letters, digits or "-"',
        'p.toml:5: root "rel/../x" contains a ".." component',
        'p.toml:6: default_pea "nobody" names no pea (peas: smtpd)',
        "p.toml:8: bind port 0 is outside 1-65535",
    ]


def test_policy_error_shape():
    with pytest.raises(rules.PolicyError) as caught:
        rules.loads(MINIMAL + '"/x" = "q"\n"/y" = "rr"\n', "f.toml")
    error = caught.value
    assert [p.line for p in error.errors] == [7, 8]
    assert error.errors[0] == rules.Problem("f.toml", 7, 'permission "q" of "/x" has a letter other than r, w, x: "q"')
    assert str(error) == "\n".join(str(p) for p in error.errors)


def test_pod_net_host_is_a_boolean_and_defaults_to_false():
    base = """\
        [pod]
        name = "t"
        root = "/srv/t"
        [pea.a]
        [pod.net]
        address = "10.88.0.2/24"
        """
    assert problems_of(base + '        host = "yes"\n') == [
        "p.toml:7: pod.net.host must be a boolean, not a string"]
    assert policy_of(base).net.host is False
    assert policy_of(base + "        host = true\n").net.host is True


# -- accept_gaps -----------------------------------------------------------------


def test_accept_gaps_names_known_gaps_only():
    assert problems_of('''\
        [pod]
        name = "t"
        root = "/srv/t"
        accept_gaps = ["proc-read", "ptrace-all"]
        [pea.a.files]
        "/" = "r"
        ''') == ['p.toml:4: accept_gaps names an unknown gap "ptrace-all" '
                 '(known: proc-read, ipc-after-transition)']
    assert problems_of('[pod]\nname = "t"\nroot = "/srv/t"\naccept_gaps = "proc-read"\n'
                       '[pea.a.files]\n"/" = "r"\n') == [
        "p.toml:4: accept_gaps must be an array of strings "
        "(of proc-read, ipc-after-transition)"]


def test_a_pod_of_several_peas_names_the_gaps_it_has_not_accepted():
    two = '[pea.a.files]\n"/" = "r"\n[pea.b.files]\n"/" = "r"\n'
    pod = '[pod]\nname = "t"\nroot = "/srv/t"\ndefault_pea = "a"\n'
    assert policy_of(pod + two).unaccepted_gaps() == ["proc-read", "ipc-after-transition"]
    assert policy_of(pod + 'accept_gaps = ["ipc-after-transition"]\n'
                     + two).unaccepted_gaps() == ["proc-read"]
    # A gap closed since (abstract-unix) is still accepted, and means nothing.
    assert policy_of(pod + 'accept_gaps = ["abstract-unix", "ipc-after-transition", '
                     '"proc-read"]\n' + two).unaccepted_gaps() == []
    assert policy_of(MINIMAL).unaccepted_gaps() == []    # one pea: nothing to separate


def test_services_are_checked_each_problem_at_its_line():
    text = MINIMAL + textwrap.dedent('''
        [[pod.service]]
        name = "web"
        exec = ["/usr/sbin/nginx"]
        user = "www-data"
        [[pod.service]]
        name = "web"
        exec = "nginx"
        restart = "sometimes"
        user = 5000000
        pea = "nope"
        [[pod.service]]
        exec = ["usr/bin/app"]
        user = "a b"
        ''')
    assert problems_of(text) == [
        'p.toml:13: service name "web" is already used by [[pod.service]] #1',
        "p.toml:14: exec must be a non-empty array of strings (program, then arguments)",
        'p.toml:15: restart "sometimes" is not one of "no", "on-failure", "always"',
        "p.toml:16: user 5000000 is not mapped by uid_map",
        'p.toml:17: pea "nope" names no pea (peas: a)',
        'p.toml:18: [[pod.service]] #3 has no "name"',
        'p.toml:19: exec program "usr/bin/app" is relative (it must start with /)',
        'p.toml:20: user "a b" is neither a pod uid nor a user name (letters, digits, "_", '
        '".", "-")',
    ]


def test_init_is_the_one_service_shorthand_and_excludes_service_tables():
    policy = rules.loads(MINIMAL.replace('root = "/srv/t"', 'root = "/srv/t"\ninit = ["/bin/x"]'),
                         "p.toml")
    assert policy.services == (Service("init", ("/bin/x",), "a", 0, "no"),)
    text = MINIMAL.replace('root = "/srv/t"', 'root = "/srv/t"\ninit = ["/bin/x"]') + \
        '\n[[pod.service]]\nname = "s"\nexec = ["/bin/y"]\n'
    assert problems_of(text) == [
        "p.toml:9: [pod] has both init and [[pod.service]]: init is the shorthand for one "
        "service, use one or the other"]
