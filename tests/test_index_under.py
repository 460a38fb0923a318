"""``search --under DIR`` through symlinks: a library indexed through a link (``~/Pictures`` ->
``/data/pics``) is found under the real folder's name, and one indexed by its real name under
the link's; a folder whose name merely starts the same is not "under". Real folders and links,
a real index, real CLI runs."""

from __future__ import annotations

import subprocess
import sys

from test_index import _shapes


def _paths(db: str, under: str) -> tuple[list[str], str]:
    res = subprocess.run([sys.executable, "-m", "edgeclip", "search", "a shape", "--db", db,
                          "--paths", "--under", under], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return sorted(res.stdout.splitlines()), res.stderr


def _index(micro_bundle, root, db: str) -> None:
    res = subprocess.run([sys.executable, "-m", "edgeclip", "index", str(root), "--db", db,
                          "--model", str(micro_bundle), "--quiet"], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr


def test_under_matches_a_folder_by_its_real_name_and_by_a_link(micro_bundle, tmp_path):
    real, link = tmp_path / "data" / "pics", tmp_path / "Pictures"
    (real / "2024").mkdir(parents=True)
    (real / "2024-old").mkdir()
    shots = _shapes(3)
    shots[0].save(real / "2024" / "a.png")
    shots[1].save(real / "2024" / "b.png")
    shots[2].save(real / "2024-old" / "c.png")
    link.symlink_to(real, target_is_directory=True)

    via_link = str(tmp_path / "via-link.db")
    _index(micro_bundle, link, via_link)
    want = [str(link / "2024" / "a.png"), str(link / "2024" / "b.png")]
    assert _paths(via_link, str(real / "2024"))[0] == want
    assert _paths(via_link, str(link / "2024") + "/")[0] == want

    by_name = str(tmp_path / "by-name.db")
    _index(micro_bundle, real, by_name)
    assert _paths(by_name, str(link / "2024"))[0] == [str(real / "2024" / n) for n in ("a.png", "b.png")]
    found, said = _paths(by_name, str(real / "2024-o"))  # a prefix of a name is not a folder
    assert found == [] and "none of the 3 photos" in said


def test_forget_matches_a_folder_by_its_real_name_and_by_a_link(micro_bundle, tmp_path):
    from edgeclip.index import Index

    real, link = tmp_path / "data" / "pics", tmp_path / "Pictures"
    (real / "2024").mkdir(parents=True)
    (real / "2024-old").mkdir()
    for shot, rel in zip(_shapes(3), ("2024/a.png", "2024/b.png", "2024-old/c.png")):
        shot.save(real / rel)
    link.symlink_to(real, target_is_directory=True)
    for root, other in ((link, real), (real, link)):
        with Index(tmp_path / f"{root.name}.db", micro_bundle) as ix:
            assert ix.update([root]).embedded == 3
            # before: 0 dropped, the photos kept, through the other name of the folder
            assert ix.remove([other / "2024"]) == 2
            assert [r.path for r in ix.store.rows()] == [str(root / "2024-old" / "c.png")]
            assert ix.remove([other / "2024-o"]) == 0  # a prefix of a name is not a folder
