"""Real Debian source packages and archives for tests, built with dpkg's own tools.

``build_source`` writes a tiny source tree and runs ``dpkg-source -b`` on it, so the .dsc,
its tarballs and its fields are exactly what dpkg makes; ``publish_archive`` lays the results
out as an archive (pool/, dists/<suite>/<component>/source/Sources{,.gz,.xz} and a Release
file, both written by ``apt-ftparchive``) and returns its file:// URL.

What dpkg really does with the hwspec field (dpkg-source 1.21.23, checked by
tests/packages/test_sources.py): ``XS-Requires-Hwspec`` in debian/control's Source stanza is
copied into the .dsc as ``Requires-Hwspec`` (the S of the X[SBC]- prefix names the .dsc);
a plain ``X-Requires-Hwspec`` is not copied anywhere (dpkg-source only warns that it is an
unknown field, as it does for every bare X- field), so it is seen only in debian/control.
dpkg-source adds ``Testsuite: autopkgtest`` to the .dsc by itself when debian/tests/control
exists, so the control file does not declare it.

A test's ``hwspec`` becomes ``X-Requires-Hwspec`` in its debian/tests/control stanza; note that
autopkgtest 5.28 skips such a stanza as having an unknown field (see portal/packages/sources.py).

Test stanzas name their ``Depends`` explicitly, never the default ``@``: the tests run as an
unprivileged user under autopkgtest's null backend, where nothing can be built or installed.
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

DEFAULT_SCRIPT = "#!/bin/sh\nset -e\necho ok\n"
MAINTAINER = "Test Maintainer <test@example.org>"
_DATE = "Thu, 03 Dec 2026 09:00:00 +0000"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        LC_ALL="C.UTF-8",
        DEBFULLNAME="Test Maintainer",
        DEBEMAIL="test@example.org",
        SOURCE_DATE_EPOCH="1796288400",
    )
    return env


def _upstream(version: str) -> str:
    v = version.split(":", 1)[-1]
    return v.rsplit("-", 1)[0] if "-" in v else v


def _tests_control(tests: list[dict]) -> str:
    stanzas = []
    for t in tests:
        first = f"Test-Command: {t['command']}" if "command" in t else f"Tests: {t['name']}"
        lines = [first, f"Depends: {t.get('depends', 'coreutils')}"]
        if t.get("restrictions"):
            lines.append(f"Restrictions: {t['restrictions']}")
        if t.get("hwspec") is not None:
            lines.append(f"X-Requires-Hwspec: {t['hwspec']}")
        stanzas.append("\n".join(lines) + "\n")
    return "\n".join(stanzas)


def build_source(
    workdir: Path,
    name: str,
    version: str,
    *,
    control_field: tuple[str, str] | None = None,
    tests: list[dict] | None = None,
    fmt: str = "3.0 (native)",
    extra_control: str = "",
) -> Path:
    """Build the source package ``name`` ``version`` in ``workdir`` and return its .dsc.

    ``control_field``: ("X-Requires-Hwspec" or "XS-Requires-Hwspec", value) in the Source
    stanza. ``tests``: [{"name", "script", "depends", "restrictions", "hwspec"}] (only "name"
    needed); None gives one "smoke" test, [] gives no debian/tests at all. ``fmt``:
    "3.0 (native)" or "3.0 (quilt)" (an orig tarball is made, the debian dir goes into the
    .debian.tar.xz; the version must then have a Debian revision). ``extra_control``: raw
    lines added to the Source stanza.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if tests is None:
        tests = [{"name": "smoke"}]
    upstream = _upstream(version)
    tree = workdir / f"{name}-{upstream}"
    if tree.exists():
        shutil.rmtree(tree)
    debian = tree / "debian"
    (debian / "source").mkdir(parents=True)
    (tree / "README").write_text(f"{name} {version}, a test package.\n")

    source = [
        f"Source: {name}",
        "Section: misc",
        "Priority: optional",
        f"Maintainer: {MAINTAINER}",
        "Standards-Version: 4.7.0",
        "Build-Depends: debhelper-compat (= 13)",
        "Rules-Requires-Root: no",
    ]
    if control_field is not None:
        source.append(f"{control_field[0]}: {control_field[1]}")
    if extra_control:
        source.append(extra_control.rstrip("\n"))
    binary = [
        f"Package: {name}",
        "Architecture: all",
        "Depends: ${misc:Depends}",
        f"Description: test package {name}",
        " A source package built by the portal's tests.",
    ]
    (debian / "control").write_text("\n".join(source) + "\n\n" + "\n".join(binary) + "\n")
    (debian / "changelog").write_text(
        f"{name} ({version}) unstable; urgency=medium\n\n  * Test upload.\n\n"
        f" -- {MAINTAINER}  {_DATE}\n"
    )
    rules = debian / "rules"
    rules.write_text("#!/usr/bin/make -f\n%:\n\tdh $@\n")
    rules.chmod(0o755)
    (debian / "source" / "format").write_text(fmt + "\n")
    if tests:
        (debian / "tests").mkdir()
        (debian / "tests" / "control").write_text(_tests_control(tests))
        for t in tests:
            if "command" in t:
                continue
            script = debian / "tests" / t["name"]
            script.write_text(t.get("script", DEFAULT_SCRIPT))
            script.chmod(0o755)

    if fmt in ("3.0 (quilt)", "1.0"):
        orig = workdir / f"{name}_{upstream}.orig.tar.gz"
        with tarfile.open(orig, "w:gz") as tar:
            tar.add(tree / "README", arcname=f"{name}-{upstream}/README")
    subprocess.run(
        ["dpkg-source", "--no-check", "-b", tree.name],
        cwd=workdir,
        env=_env(),
        check=True,
        capture_output=True,
    )
    shutil.rmtree(tree)
    noepoch = version.split(":", 1)[-1]
    dsc = workdir / f"{name}_{noepoch}.dsc"
    assert dsc.exists(), dsc
    return dsc


def _dsc_files(dsc: Path) -> list[Path]:
    from debian import deb822

    with open(dsc) as f:
        d = deb822.Dsc(f)
    return [dsc] + [dsc.parent / entry["name"] for entry in d["Files"]]


def publish_archive(
    root: Path, dscs: list[Path], suite: str = "unstable", component: str = "main"
) -> str:
    """Publish the source packages as ``suite``/``component`` of an archive at ``root``
    (adding to what is there: the index lists every package of its pool) and return the
    archive's file:// URL."""
    root = Path(root)
    pool_rel = f"pool/{component}"
    for dsc in dscs:
        name = dsc.name.split("_", 1)[0]
        prefix = name[:4] if name.startswith("lib") else name[:1]
        dest = root / pool_rel / prefix / name
        dest.mkdir(parents=True, exist_ok=True)
        for f in _dsc_files(Path(dsc)):
            shutil.copy2(f, dest / f.name)
    index_dir = root / "dists" / suite / component / "source"
    index_dir.mkdir(parents=True, exist_ok=True)
    sources = subprocess.run(
        ["apt-ftparchive", "sources", pool_rel],
        cwd=root,
        env=_env(),
        check=True,
        capture_output=True,
    ).stdout
    (index_dir / "Sources").write_bytes(sources)
    (index_dir / "Sources.gz").write_bytes(gzip.compress(sources, mtime=0))
    (index_dir / "Sources.xz").write_bytes(lzma.compress(sources))
    release = subprocess.run(
        [
            "apt-ftparchive",
            "-o",
            f"APT::FTPArchive::Release::Suite={suite}",
            "-o",
            f"APT::FTPArchive::Release::Codename={suite}",
            "-o",
            f"APT::FTPArchive::Release::Components={component}",
            "release",
            ".",
        ],
        cwd=root / "dists" / suite,
        env=_env(),
        check=True,
        capture_output=True,
    ).stdout
    (root / "dists" / suite / "Release").write_bytes(release)
    return root.resolve().as_uri()
