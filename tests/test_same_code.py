"""``bench.store.tracking.same_code``: which earlier runs a suite reuses or resumes. A commit that
changes no package code (the README, tests, results, a suite file's text, the report's code)
keeps them; one that
changes ``bench/`` or ``variants/`` does not; a dirty checkout is judged by its working tree."""

from __future__ import annotations

import subprocess

import pytest

from bench.store import tracking


def _git(repo, *args) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@example.org")
    _git(tmp_path, "config", "user.name", "t")
    (tmp_path / "bench" / "suites").mkdir(parents=True)
    (tmp_path / "variants").mkdir()
    monkeypatch.setattr(tracking, "REPO", tmp_path)
    monkeypatch.setattr(tracking, "_SAME_CODE", {})
    return tmp_path


def _commit(repo, path: str, text: str) -> str:
    (repo / path).write_text(text)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", path)
    return _git(repo, "rev-parse", "HEAD")


def test_only_a_change_of_package_code_separates_two_commits(repo):
    a = _commit(repo, "bench/train.py", "x = 1\n")
    b = _commit(repo, "README.md", "docs\n")
    c = _commit(repo, "bench/suites/s.toml", 'description = "new words"\n')
    d = _commit(repo, "variants/vanilla.py", "y = 2\n")
    e = _commit(repo, "bench/train.py", "x = 3\n")
    assert tracking.same_code(a, b) and tracking.same_code(a, c) and tracking.same_code(b, c)
    assert not tracking.same_code(c, d)  # variants/ changed
    assert not tracking.same_code(d, e) and not tracking.same_code(a, e)  # bench/ changed
    assert tracking.same_code(e, e) and not tracking.same_code("", e) and not tracking.same_code("unknown", e)
    (repo / "bench" / "plots").mkdir()
    f = _commit(repo, "bench/plots/figures.py", "drawn = 1\n")  # the report: a long suite goes on
    assert tracking.same_code(e, f) and not tracking.same_code(d, f)


def test_a_dirty_checkout_is_judged_by_its_working_tree(repo):
    a = _commit(repo, "bench/train.py", "x = 1\n")
    (repo / "README.md").write_text("edited, not committed\n")
    assert tracking.same_code(a, f"{a}-dirty")
    (repo / "bench" / "train.py").write_text("x = 2\n")
    tracking._SAME_CODE.clear()
    assert not tracking.same_code(a, f"{a}-dirty")
    assert not tracking.same_code(f"{a}-dirty", a)  # a run from a dirty tree: its code is not known
