"""The archive watcher on real archives (tests/packages/builder.py): it stores exactly the
packages that declare a hwspec, reads an index again only when it changed, and records what
went wrong without raising."""

import functools
import hashlib
import http.server
import shutil
import threading

import pytest
from django.core.cache import cache

from portal.packages import tasks
from portal.packages.models import Archive, SourceIndex, SourcePackage
from portal.packages.watch import CACHE_PREFIX, needs_accelerator, watch
from tests.packages.builder import build_source, publish_archive

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    work = tmp_path_factory.mktemp("watch")
    return [
        build_source(work, "xs-cuda", "1.0", control_field=("XS-Requires-Hwspec", "cuda")),
        build_source(
            work,
            "x-rocm",
            "2.0-1",
            control_field=("X-Requires-Hwspec", "rocm"),
            fmt="3.0 (quilt)",
        ),
        build_source(
            work, "per-test", "1.0", tests=[{"name": "plain"}, {"name": "gpu", "hwspec": "sycl"}]
        ),
        build_source(work, "cpu-only", "1.0", control_field=("XS-Requires-Hwspec", "cpu")),
        build_source(work, "plain", "1.0"),
        build_source(work, "malformed", "1.0", control_field=("XS-Requires-Hwspec", "cuda |")),
        # No debian/tests: no Testsuite, never looked at even with a hwspec.
        build_source(
            work, "no-tests", "1.0", control_field=("XS-Requires-Hwspec", "cuda"), tests=[]
        ),
    ]


@pytest.fixture
def archive_dir(built, tmp_path):
    root = tmp_path / "archive"
    publish_archive(root, built)
    return root


def _archive(url, **fields):
    return Archive.objects.create(
        name="test", url=url, suites=["unstable"], components=["main"], **fields
    )


def _index():
    return SourceIndex.objects.get(suite="unstable", component="main")


def test_it_stores_exactly_the_packages_that_declare_a_hwspec(archive_dir):
    archive = _archive(archive_dir.as_uri())
    new = watch(archive)
    assert sorted(p.name for p in new) == ["cpu-only", "malformed", "per-test", "x-rocm", "xs-cuda"]
    assert SourcePackage.objects.count() == 5
    xs = SourcePackage.objects.get(name="xs-cuda")
    assert (xs.version, xs.hwspec, xs.suite, xs.component) == ("1.0", "cuda", "unstable", "main")
    assert xs.tests == [{"tests": ["smoke"], "hwspec": "cuda", "restrictions": []}]
    assert (xs.testsuite, xs.directory, xs.error) == ("autopkgtest", "pool/main/x/xs-cuda", "")
    assert [f["name"] for f in xs.files] == ["xs-cuda_1.0.dsc", "xs-cuda_1.0.tar.xz"]
    assert SourcePackage.objects.get(name="x-rocm").hwspec == "rocm"  # debian/control only
    per_test = SourcePackage.objects.get(name="per-test")
    assert per_test.hwspec == ""
    assert [s["hwspec"] for s in per_test.tests] == ["", "sycl"]
    assert "Empty alternative" in SourcePackage.objects.get(name="malformed").error
    index = _index()
    assert index.validator.startswith("sha256:")
    assert (index.packages, index.error) == (5, "")
    assert index.read_at is not None


def test_it_queues_only_what_needs_an_accelerator(archive_dir):
    watch(_archive(archive_dir.as_uri()))
    needing = {p.name for p in SourcePackage.objects.all() if needs_accelerator(p)}
    assert needing == {"per-test", "x-rocm", "xs-cuda"}


def test_it_reads_nothing_when_the_index_is_unchanged(archive_dir):
    archive = _archive(archive_dir.as_uri())
    watch(archive)
    read_at = _index().read_at
    # Were the index read again, these would fail their Release SHA256s.
    for index in (archive_dir / "dists/unstable/main/source").iterdir():
        index.write_bytes(b"garbage")
    assert watch(archive) == []
    assert (_index().read_at, _index().error) == (read_at, "")


def test_it_finds_a_new_version_and_fetches_nothing_it_has_read(archive_dir, built, tmp_path):
    archive = _archive(archive_dir.as_uri())
    watch(archive)
    newer = build_source(
        tmp_path / "newer", "xs-cuda", "1.1", control_field=("XS-Requires-Hwspec", "rocm")
    )
    publish_archive(archive_dir, [newer])
    # The cache remembers that plain declares nothing: its tarball is not fetched again.
    (archive_dir / "pool/main/p/plain/plain_1.0.tar.xz").unlink()
    new = watch(archive)
    assert [(p.name, p.version, p.hwspec) for p in new] == [("xs-cuda", "1.1", "rocm")]
    assert (_index().packages, _index().error) == (6, "")
    assert SourcePackage.objects.filter(name="xs-cuda").count() == 2


def test_it_reads_again_a_package_whose_tarball_it_could_not_fetch(archive_dir):
    archive = _archive(archive_dir.as_uri())
    moved = archive_dir.parent / "moved"
    shutil.move(archive_dir / "pool/main/x/x-rocm", moved)
    watch(archive)
    index = _index()
    assert "x-rocm_2.0-1.debian.tar.xz" in index.error
    assert index.validator == ""  # not fully read: read again next time
    assert not SourcePackage.objects.filter(name="x-rocm").exists()
    shutil.move(moved, archive_dir / "pool/main/x/x-rocm")
    assert [p.name for p in watch(archive)] == ["x-rocm"]
    assert _index().error == ""
    assert _index().validator.startswith("sha256:")


def test_it_records_an_unreachable_archive_and_changes_nothing_else(archive_dir, tmp_path):
    archive = _archive(archive_dir.as_uri())
    watch(archive)
    before = _index().validator
    shutil.rmtree(archive_dir)
    assert watch(archive) == []
    index = _index()
    assert index.error.startswith("Cannot fetch file://")
    assert index.validator == before
    assert SourcePackage.objects.count() == 5
    Archive.objects.filter(pk=archive.pk).update(url="http://127.0.0.1:9/debian")
    archive.refresh_from_db()
    assert watch(archive) == []
    assert _index().error.startswith("Cannot fetch http://127.0.0.1:9/debian/dists/unstable/")


def test_it_says_when_the_index_does_not_match_its_release(archive_dir):
    (archive_dir / "dists/unstable/main/source/Sources.xz").write_bytes(b"garbage")
    watch(_archive(archive_dir.as_uri()))
    assert "does not match the SHA256 of its Release file" in _index().error
    assert _index().validator == ""
    assert SourcePackage.objects.count() == 0


def test_it_validates_an_index_without_a_release_file_by_its_date(archive_dir):
    (archive_dir / "dists/unstable/Release").unlink()
    archive = _archive(archive_dir.as_uri())
    assert len(watch(archive)) == 5
    assert _index().validator.startswith("last-modified:")
    read_at = _index().read_at
    assert watch(archive) == []
    assert _index().read_at == read_at


def test_it_caches_only_what_mentions_a_hwspec(archive_dir, built):
    watch(_archive(archive_dir.as_uri()))

    def cached(name):
        tarball = archive_dir / f"pool/main/{name[0]}/{name}/{name}_1.0.tar.xz"
        return cache.get(CACHE_PREFIX + hashlib.sha256(tarball.read_bytes()).hexdigest())

    assert cached("plain") == {"control": None}
    assert "XS-Requires-Hwspec: cuda" in cached("xs-cuda")["control"]
    assert "X-Requires-Hwspec: sycl" in cached("per-test")["tests_control"]


def test_the_task_watches_enabled_archives(archive_dir):
    _archive(archive_dir.as_uri(), queue_new_versions=False)
    Archive.objects.create(
        name="off", url="file:///nowhere", suites=["sid"], components=["main"], enabled=False
    )
    assert tasks.watch.apply().get() == 5
    assert not SourceIndex.objects.filter(archive__name="off").exists()


@pytest.fixture
def http_archive(archive_dir):
    """The archive served over HTTP by Python's http.server (Last-Modified, and a 304 to a
    matching If-Modified-Since)."""
    handler = functools.partial(QuietHandler, directory=str(archive_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[tuple[str, int]] = []

    def log_request(self, code="-", size="-"):
        QuietHandler.requests.append((self.path, int(code)))


def test_it_asks_an_http_server_whether_an_index_without_release_changed(archive_dir, http_archive):
    (archive_dir / "dists/unstable/Release").unlink()
    archive = _archive(http_archive)
    assert len(watch(archive)) == 5
    assert _index().validator.startswith("last-modified:")
    QuietHandler.requests.clear()
    assert watch(archive) == []
    assert ("/dists/unstable/main/source/Sources.xz", 304) in QuietHandler.requests
    assert _index().error == ""


def test_it_reads_an_archive_over_http(http_archive):
    archive = _archive(http_archive)
    assert len(watch(archive)) == 5
    assert watch(archive) == []
    assert (_index().packages, _index().error) == (5, "")
