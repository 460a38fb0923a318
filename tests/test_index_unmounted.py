"""A drive or network share that is not mounted must not be pruned away.

An unmounted NAS leaves its mount point as an empty folder on the system disk: a cron job's
`edgeclip index /mnt/nas --prune` (or `edgeclip index --prune` alone) used to drop every one of
its rows, and hours of embedding with them. Here a real second filesystem (a tmpfs such as
/dev/shm, or any writable folder on another device than pytest's tmp dir) plays the drive; a
symlink at the mount point stands for "mounted", an empty folder there for "not mounted".
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from edgeclip.index import Index
from edgeclip.index.cli import main as cli


@pytest.fixture()
def other_filesystem(tmp_path) -> Path:
    here = os.stat(tmp_path).st_dev
    for candidate in ("/dev/shm", f"/run/user/{os.getuid()}", "/var/tmp", os.getcwd(), str(Path.home())):
        try:
            if os.stat(candidate).st_dev != here and os.access(candidate, os.W_OK):
                folder = Path(tempfile.mkdtemp(prefix="edgeclip-drive-", dir=candidate))
                break
        except OSError:
            continue
    else:
        raise AssertionError(f"no writable folder on another filesystem than {tmp_path}")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _photos(folder: Path, n: int, seed: int) -> list[Path]:
    from converters.calibration import synthetic_pairs

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(synthetic_pairs(n, 48, seed)[0]):
        paths.append(folder / f"photo {seed}-{i}.png")
        im.save(paths[-1])
    return paths


def _statuses(db: Path, bundle: Path) -> dict[str, str]:
    with Index(db, bundle) as ix:
        return {Path(r.path).name: r.status for r in ix.store.rows()}


def test_a_drive_that_is_not_mounted_keeps_its_rows_even_with_prune(tmp_path, other_filesystem, micro_bundle, capsys):
    drive = other_filesystem
    nas_photos = _photos(drive / "2020", 3, seed=1)
    home_photos = _photos(tmp_path / "home", 2, seed=2)
    mount_point, db = tmp_path / "nas", tmp_path / "lib.db"
    mount_point.symlink_to(drive)  # "mounted"
    dirs = [str(mount_point), str(tmp_path / "home")]
    common = ["--db", str(db), "--model", str(micro_bundle), "--quiet"]
    assert cli(["index", *dirs, *common]) == 0
    capsys.readouterr()

    mount_point.unlink()
    mount_point.mkdir()  # "unmounted": an empty folder on the system disk
    assert cli(["index", *dirs, *common, "--prune", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["pruned"] == 0 and report["unmounted"] == 3 and report["unchanged"] == 2
    (kept,) = report["walk_errors"]
    assert kept.startswith(f"{mount_point}: 3 indexed photos under it were not found")
    assert "not mounted?" in kept and f"edgeclip index --forget '{mount_point}' --db '{db}'" in kept
    assert cli(["index", "--prune", "--db", str(db)]) == 1  # prune alone, no walk: the same
    out, err = capsys.readouterr()
    assert out.startswith("pruned 0 files") and "not mounted?" in err
    assert sorted(_statuses(db, micro_bundle).values()) == ["missing"] * 3 + ["ok"] * 2
    assert cli(["search", "a red circle", "--db", str(db), "-k", "10", "--json"]) == 0
    assert {Path(h["path"]).parent for h in json.loads(capsys.readouterr().out)} == {tmp_path / "home"}

    mount_point.rmdir()
    mount_point.symlink_to(drive)  # mounted again: back without embedding
    assert cli(["index", *dirs, *common, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["embedded"], report["unchanged"], report["missing"]) == (0, 5, 0)

    nas_photos[0].unlink()  # really deleted, while mounted: pruned as before
    assert cli(["index", *dirs, *common, "--prune", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pruned"] == 1

    assert cli(["index", "--forget", str(mount_point), "--db", str(db)]) == 0  # gone for good
    assert "dropped 2 files from the index" in capsys.readouterr().out
    assert set(_statuses(db, micro_bundle)) == {p.name for p in home_photos}


def test_a_remount_under_a_new_device_number_still_prunes_deleted_files(tmp_path, other_filesystem, micro_bundle):
    """After a remount the share's files may carry another st_dev. The walk found files on the
    folder's filesystem, so it is mounted, and a file missing there is really gone."""
    drive = other_filesystem
    photos = _photos(drive / "2021", 3, seed=3)
    mount_point, db = tmp_path / "nas", tmp_path / "lib.db"
    mount_point.symlink_to(drive)
    with Index(db, micro_bundle) as ix:
        assert ix.update([mount_point]).embedded == 3
    mount_point.unlink()
    shutil.copytree(drive, mount_point, copy_function=shutil.copy2)  # same files, other device
    (mount_point / "2021" / photos[0].name).unlink()
    with Index(db, micro_bundle) as ix:
        report = ix.update([mount_point], prune=True)
    assert (report.unchanged, report.pruned, report.unmounted, report.walk_errors) == (2, 1, 0, [])
