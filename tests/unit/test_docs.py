"""The README is the newcomer's document, the reference lives in docs/ (issue 38): the README stays short enough
to read, and every link between them leads somewhere, down to the section it names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
README = REPO / "README.rst"
DOCS = sorted((REPO / "docs").glob("*.rst"))
# a relative link to an .rst file, as `text <docs/reference.rst#json>`__ writes it: (path, anchor)
LINK = re.compile(r"<((?:\.\./|docs/)?[\w./-]+\.rst)(?:#([\w-]+))?>`__?")


def links(path: Path) -> "list[tuple[str, str]]":
    return LINK.findall(path.read_text())


def section_ids(path: Path) -> "set[str]":
    """The ids docutils gives the sections of `path`: what `#anchor` names on a rendered page."""
    docutils_core = pytest.importorskip("docutils.core")  # `make setup-dev` installs it: CI fails a skip
    import docutils.nodes

    tree = docutils_core.publish_doctree(path.read_text(), source_path=str(path),
                                         settings_overrides={"report_level": 5})
    return {i for section in tree.findall(docutils.nodes.section) for i in section["ids"]}


def test_the_readme_is_under_45000_bytes():
    size = README.stat().st_size
    assert size < 45000, "README.rst is %d bytes: move reference material to docs/" % size


def test_the_readme_links_to_the_reference():
    targets = {target for target, _ in links(README)}
    assert "docs/reference.rst" in targets, targets


def test_every_file_in_docs_is_linked_from_the_readme():
    targets = {target.split("#")[0] for target, _ in links(README)}
    assert {"docs/" + path.name for path in DOCS} - targets == set()


@pytest.mark.parametrize("name", ["README.rst"] + ["docs/" + path.name for path in DOCS])
def test_every_link_to_an_rst_file_leads_to_it_and_its_section(name):
    source = REPO / name
    found = links(source)
    if name == "README.rst":
        assert [t for t, _ in found if t.startswith("docs/")], "the README links to nothing in docs/"
    for target, anchor in found:
        path = (source.parent / target).resolve()
        assert path.is_file(), "%s links to %s, which does not exist" % (name, target)
        if anchor:
            assert anchor in section_ids(path), "%s links to %s#%s: no such section" % (name, target, anchor)
