"""Reading source packages: what dpkg really writes, and portal.packages.sources on real
packages built by dpkg-source (tests/packages/builder.py)."""

import gzip
import hashlib
import io
import re
import shutil
import tarfile

import pytest
from debian import deb822

from portal.packages import sources
from portal.packages.sources import SourceError
from tests.packages.builder import build_source, publish_archive


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    work = tmp_path_factory.mktemp("sources")
    cuda = [{"name": "smoke"}]
    return {
        "xs": build_source(work, "xs-cuda", "1.0", control_field=("XS-Requires-Hwspec", "cuda")),
        "x": build_source(
            work,
            "x-rocm",
            "2.0-1",
            control_field=("X-Requires-Hwspec", "rocm:gfx1030 | cuda"),
            fmt="3.0 (quilt)",
        ),
        "override": build_source(
            work,
            "override",
            "1.0",
            control_field=("XS-Requires-Hwspec", "cuda | rocm"),
            tests=[
                {"name": "smoke"},
                {"name": "cpu-only", "hwspec": "cpu", "restrictions": "superficial, needs-root"},
                {"command": "true", "hwspec": "amd64+gfx1030"},
                {"command": "echo 2"},
            ],
        ),
        "none": build_source(work, "plain", "1.0", tests=cuda),
        "malformed": build_source(
            work, "malformed", "1.0", control_field=("XS-Requires-Hwspec", "cuda |")
        ),
        "bad-test": build_source(work, "bad-test", "1.0", tests=[{"name": "t", "hwspec": "tpu"}]),
        "old": build_source(
            work, "old-format", "1.0-1", fmt="1.0", control_field=("X-Requires-Hwspec", "sycl")
        ),
    }


def _dsc(path):
    with open(path) as f:
        return deb822.Dsc(f)


def test_it_finds_dpkg_copying_xs_into_the_dsc_as_requires_hwspec(built):
    dsc = _dsc(built["xs"])
    assert dsc["Requires-Hwspec"] == "cuda"
    assert dsc["Testsuite"] == "autopkgtest"
    assert "XS-Requires-Hwspec" not in dsc


def test_it_finds_dpkg_leaving_a_plain_x_field_out_of_the_dsc(built):
    dsc = _dsc(built["x"])
    assert "Requires-Hwspec" not in dsc
    assert "X-Requires-Hwspec" not in dsc


def test_it_reads_the_hwspec_of_the_dsc(built):
    tests = sources.read_dsc_dir(built["xs"])
    assert (tests.name, tests.version, tests.hwspec, tests.error) == ("xs-cuda", "1.0", "cuda", "")
    assert tests.maintainer == "Test Maintainer <test@example.org>"
    assert tests.testsuite == "autopkgtest"
    assert tests.stanzas == [{"tests": ["smoke"], "hwspec": "cuda", "restrictions": []}]
    assert tests.declares_hwspec


def test_it_reads_a_plain_x_field_from_the_quilt_debian_tarball(built):
    assert sources.debian_dir_file(_dsc(built["x"])) == "x-rocm_2.0-1.debian.tar.xz"
    tests = sources.read_dsc_dir(built["x"])
    assert (tests.hwspec, tests.error) == ("rocm:gfx1030 | cuda", "")
    assert tests.stanzas[0]["hwspec"] == "rocm:gfx1030 | cuda"


def test_it_lets_a_test_stanza_override_the_package_and_names_commands_as_autopkgtest(built):
    tests = sources.read_dsc_dir(built["override"])
    assert tests.error == ""
    assert tests.stanzas == [
        {"tests": ["smoke"], "hwspec": "cuda | rocm", "restrictions": []},
        {"tests": ["cpu-only"], "hwspec": "cpu", "restrictions": ["superficial", "needs-root"]},
        {"tests": ["command1"], "hwspec": "amd64+gfx1030", "restrictions": []},
        {"tests": ["command2"], "hwspec": "cuda | rocm", "restrictions": []},
    ]


def test_it_finds_no_hwspec_in_a_package_without_one(built):
    tests = sources.read_dsc_dir(built["none"])
    assert (tests.hwspec, tests.error, tests.declares_hwspec) == ("", "", False)
    assert tests.stanzas == [{"tests": ["smoke"], "hwspec": "", "restrictions": []}]


def test_it_says_what_is_malformed_without_raising(built):
    tests = sources.read_dsc_dir(built["malformed"])
    assert tests.hwspec == "cuda |"
    assert tests.declares_hwspec
    assert tests.error.startswith("The .dsc's Requires-Hwspec: Empty alternative in 'cuda |'")


def test_it_names_the_test_stanza_whose_hwspec_is_unknown(built):
    tests = sources.read_dsc_dir(built["bad-test"])
    assert tests.error.startswith("debian/tests/control stanza 1 (t): Unknown hardware spec")
    assert tests.declares_hwspec


def test_it_reads_debian_control_out_of_a_1_0_diff(built):
    assert sources.debian_dir_file(_dsc(built["old"])) == "old-format_1.0-1.diff.gz"
    tests = sources.read_dsc_dir(built["old"])
    assert (tests.hwspec, tests.error) == ("sycl", "")
    assert tests.stanzas == [{"tests": ["smoke"], "hwspec": "sycl", "restrictions": []}]


def test_it_refuses_a_1_0_diff_that_changes_debian_control():
    diff = (
        "--- foo-1.0.orig/debian/control\n+++ foo-1.0/debian/control\n"
        "@@ -1,2 +1,3 @@\n Source: foo\n+X-Requires-Hwspec: cuda\n"
    )
    with pytest.raises(SourceError, match="changes debian/control rather than creating it"):
        sources.read_debian_dir(gzip.compress(diff.encode()), "foo_1.0-1.diff.gz")


def _tarball(members):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_it_prefers_the_shallowest_control_and_ignores_deeper_ones():
    data = _tarball(
        [
            ("foo-1.0/vendor/debian/control", b"Source: vendored\n"),
            ("foo-1.0/debian/control", b"Source: foo\n"),
            ("./debian/tests/control", b"Tests: t\n"),
        ]
    )
    debian = sources.read_debian_dir(data, "foo_1.0.tar.gz")
    assert debian.control == "Source: foo\n"
    assert debian.tests_control == "Tests: t\n"


def test_it_refuses_a_control_that_is_a_link():
    data = _tarball([("debian/control", None)])
    with pytest.raises(SourceError, match="debian/control is not a plain file"):
        sources.read_debian_dir(data, "foo_1.0-1.debian.tar.gz")


def test_it_says_when_a_tarball_is_not_one():
    with pytest.raises(SourceError, match="is not a valid"):
        sources.read_debian_dir(b"not a tarball", "foo_1.0-1.debian.tar.xz")
    with pytest.raises(SourceError, match="has no debian/control"):
        sources.read_debian_dir(_tarball([("README", b"x")]), "foo_1.0.tar.gz")


def test_it_checks_a_dsc_fields():
    with pytest.raises(SourceError, match="has no Version field"):
        sources.parse_dsc(b"Format: 3.0 (native)\nSource: foo\n", "foo.dsc")
    sha = "0" * 64
    escaping = (
        f"Format: 3.0 (native)\nSource: foo\nVersion: 1.0\nFiles:\n 00 1 ../x.tar.xz\n"
        f"Checksums-Sha256:\n {sha} 1 ../x.tar.xz\n"
    )
    with pytest.raises(SourceError, match=re.escape("is not a file a .dsc can list")):
        sources.parse_dsc(escaping, "foo.dsc")


def test_it_fetches_a_package_and_checks_its_files(built, tmp_path):
    url = publish_archive(tmp_path / "archive", [built["xs"]])
    directory = f"{url}/pool/main/x/xs-cuda"
    paths = sources.fetch_source_files(directory, "xs-cuda_1.0.dsc", None, tmp_path / "in")
    assert [p.name for p in paths] == ["xs-cuda_1.0.dsc", "xs-cuda_1.0.tar.xz"]
    assert sources.read_dsc_dir(paths[0]).hwspec == "cuda"
    # From a directory too, and a changed file is refused.
    tarball = tmp_path / "archive/pool/main/x/xs-cuda/xs-cuda_1.0.tar.xz"
    tarball.write_bytes(tarball.read_bytes()[:-1] + b"\0")
    with pytest.raises(SourceError, match=r"xs-cuda_1\.0\.tar\.xz does not match"):
        sources.fetch_source_files(tarball.parent, "xs-cuda_1.0.dsc", None, tmp_path / "in2")
    assert not (tmp_path / "in2" / "xs-cuda_1.0.tar.xz").exists()


def test_it_checks_the_dsc_against_the_archive_sha256(built, tmp_path):
    shutil.copy(built["none"], tmp_path)
    data = built["none"].read_bytes()
    other = {"name": built["none"].name, "size": len(data), "sha256": "1" * 64}
    with pytest.raises(SourceError, match="does not match its SHA256"):
        sources.fetch_source_files(tmp_path, built["none"].name, [other], tmp_path / "in")
    right = dict(other, sha256=hashlib.sha256(data).hexdigest())
    with pytest.raises(SourceError, match=re.escape("Cannot read plain_1.0.tar.xz")):
        sources.fetch_source_files(tmp_path, built["none"].name, [right], tmp_path / "in")


def test_it_says_why_a_fetch_failed(tmp_path):
    with pytest.raises(SourceError, match="Cannot fetch file://") as missing:
        sources.fetch((tmp_path / "nothing").as_uri(), 100)
    assert missing.value.missing
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    with pytest.raises(SourceError, match="larger than"):
        sources.fetch(big.as_uri(), 100)
    with pytest.raises(SourceError, match="is not an http or https URL"):
        sources.fetch(big.as_uri(), 1000, allow_file=False)
    with pytest.raises(SourceError, match=re.escape("Cannot fetch http://127.0.0.1:9/")):
        sources.fetch("http://127.0.0.1:9/Sources", 100, timeout=5)


def test_it_reads_an_index_in_each_compression(built, tmp_path):
    url = publish_archive(tmp_path / "archive", [built["xs"], built["none"]])
    index = tmp_path / "archive/dists/unstable/main/source"
    for name in ("Sources", "Sources.gz", "Sources.xz"):
        stanzas = list(sources.read_index((index / name).read_bytes(), name))
        assert [s["Package"] for s in stanzas] == ["plain", "xs-cuda"]
        assert [sources.hwspec_field(s) for s in stanzas] == [None, "cuda"]
    assert url.startswith("file://")
