"""The line scanner: key paths to lines, through everything TOML allows."""

from __future__ import annotations

import tomllib

from hypothesis import given, settings, strategies as st

from rules.lines import key_lines, line_of


def lines(text: str) -> dict:
    tomllib.loads(text)  # the scanner only ever sees valid TOML
    return key_lines(text)


def test_tables_keys_and_arrays_of_tables():
    text = (
        "# comment [not.a.table]\n"        # 1
        "[pod]\n"                          # 2
        'name = "t"   # [x]\n'             # 3
        "[[pod.mount]]\n"                  # 4
        'host = "/usr"\n'                  # 5
        "[[pod.mount]]\n"                  # 6
        'path = "/lib"\n'                  # 7
        "[pea.a.files]\n"                  # 8
        '"/etc/" = "r"\n'                  # 9
        "'/var/' = 'rw'\n"                 # 10
    )
    got = lines(text)
    assert got[("pod",)] == 2
    assert got[("pod", "name")] == 3
    assert got[("pod", "mount")] == 4
    assert got[("pod", "mount", 0)] == 4
    assert got[("pod", "mount", 0, "host")] == 5
    assert got[("pod", "mount", 1)] == 6
    assert got[("pod", "mount", 1, "path")] == 7
    assert got[("pea",)] == 8 and got[("pea", "a")] == 8
    assert got[("pea", "a", "files", "/etc/")] == 9
    assert got[("pea", "a", "files", "/var/")] == 10


def test_multiline_strings_hide_what_looks_like_tables_and_keys():
    text = (
        "[pod]\n"                                 # 1
        'init = ["/bin/sh", """\n'                # 2
        "[pea.fake]\n"                            # 3
        'x = "y" \\" """ ]\n'                     # 4  (ends the string and array)
        "root = '''\n"                            # 5
        "[another]'''\n"                          # 6
        'name = """a""""\n'                       # 7  (content ends with a quote)
        "[pea.a]\n"                               # 8
    )
    got = lines(text)
    assert ("pea", "fake") not in got and ("another",) not in got
    assert got[("pod", "root")] == 5
    assert got[("pod", "name")] == 7
    assert got[("pea", "a")] == 8


def test_quoted_and_escaped_keys():
    text = (
        "[pea.a.files]\n"
        '"/a\\"b" = "r"\n'
        '"/\\u00e9t\\u00e9/" = "r"\n'
        "'/c\\d' = 'r'\n"
        '"/tab\\there" = "r"\n'
    )
    got = lines(text)
    assert got[("pea", "a", "files", '/a"b')] == 2
    assert got[("pea", "a", "files", "/été/")] == 3
    assert got[("pea", "a", "files", "/c\\d")] == 4
    assert got[("pea", "a", "files", "/tab\there")] == 5


def test_dotted_keys_with_spaces_and_implicit_tables():
    text = (
        "pod . name = 't'\n"                   # 1
        "[pea]\n"                              # 2
        'smtpd . files . "/etc/" = "r"\n'      # 3
        "smtpd.net.bind = [25]\n"              # 4
    )
    got = lines(text)
    assert got[("pod",)] == 1
    assert got[("pod", "name")] == 1
    assert got[("pea",)] == 2
    assert got[("pea", "smtpd")] == 3
    assert got[("pea", "smtpd", "files", "/etc/")] == 3
    assert got[("pea", "smtpd", "net")] == 4
    assert got[("pea", "smtpd", "net", "bind")] == 4


def test_explicit_header_wins_over_an_earlier_implicit_table():
    text = "[pod.net]\naddress = '10.88.0.2/24'\n\n[pod]\nname = 't'\n"
    got = lines(text)
    assert got[("pod",)] == 4
    assert got[("pod", "net")] == 1


def test_inline_tables_and_multiline_arrays():
    text = (
        "[pod]\n"                                         # 1
        "uid_map = [\n"                                   # 2
        "  [0, 100000, 10], # first\n"                    # 3
        "  [10, 200000, 10],\n"                           # 4
        "]\n"                                             # 5
        "mount = [\n"                                     # 6
        "  { host = '/usr', path = '/usr' },\n"           # 7
        "  # { host = '/x' },\n"                          # 8
        "  { host = '/lib', path = '/lib' },\n"           # 9
        "]\n"                                             # 10
        "limits = { memory = '1G', pids = 5 }\n"          # 11
        "when = 1979-05-27 07:32:00Z\n"                   # 12
        "n = -1_000\n"                                    # 13
    )
    got = lines(text)
    # Array elements are not keys: they resolve to the key's line.
    assert line_of(got, ("pod", "uid_map")) == 2
    assert line_of(got, ("pod", "uid_map", 1)) == 2
    assert got[("pod", "mount", 0)] == 7
    assert got[("pod", "mount", 1)] == 9
    assert got[("pod", "mount", 1, "path")] == 9
    assert got[("pod", "limits", "pids")] == 11
    assert got[("pod", "when")] == 12
    assert got[("pod", "n")] == 13


def test_subtable_of_an_array_of_tables_element():
    text = (
        "[[pod.mount]]\n"         # 1
        "host = '/a'\n"           # 2
        "[[pod.mount]]\n"         # 3
        "[pod.mount.opts]\n"      # 4
        "x = 1\n"                 # 5
    )
    got = lines(text)
    assert got[("pod", "mount", 1, "opts")] == 4
    assert got[("pod", "mount", 1, "opts", "x")] == 5


def test_crlf_line_ends():
    got = lines("[pod]\r\nname = 't'\r\n\r\n[pea.a]\r\n")
    assert got[("pod", "name")] == 2
    assert got[("pea", "a")] == 4


def test_line_of_falls_back_to_ancestors_then_line_1():
    got = {("pod",): 3, ("pod", "name"): 4}
    assert line_of(got, ("pod", "name")) == 4
    assert line_of(got, ("pod", "root")) == 3
    assert line_of(got, ("pea", "x")) == 1
    assert line_of(got, ()) == 1


# Random rule tables written in several TOML styles: the scanner must find
# every key on the line where it was written.
_names = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)


def _basic(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_names, st.sampled_from(["basic", "literal", "dotted"]),
                          st.integers(0, 2)), min_size=1, max_size=12, unique_by=lambda t: t[0]))
def test_random_keys_are_found_on_their_lines(entries):
    out = ["[pea.a.files]"]
    where = {}
    for name, style, blank in entries:
        out.extend([""] * blank)
        if style == "literal" and "'" not in name:
            key = "'" + name + "'"
        else:
            key = _basic(name)
        out.append(f"{key} = 'r' # {name!r}")
        where[("pea", "a", "files", name)] = len(out)
    got = lines("\n".join(out) + "\n")
    for path, line in where.items():
        assert got[path] == line
