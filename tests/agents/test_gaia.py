"""GAIA loader (HF layout: jsonl, parquet, per-level parquet), hub errors, and the two scorers."""

from __future__ import annotations

import dataclasses
import http.server
import json
import pathlib
import shutil
import threading

import pytest

from ps_jax.agents.gaia import (
  REPO_ID,
  GaiaTask,
  extract_answer_text,
  load_gaia,
  load_gaia_hub,
  score_official,
  score_release,
)

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "gaia"


def _rows(split: str) -> list[dict]:
  path = FIXTURE / "2023" / split / "metadata.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _copy(tmp_path: pathlib.Path) -> pathlib.Path:
  root = tmp_path / "gaia"
  shutil.copytree(FIXTURE, root)
  return root


def _write_parquet(path: pathlib.Path, rows: list[dict]) -> None:
  import pyarrow as pa
  import pyarrow.parquet as pq

  pq.write_table(pa.Table.from_pylist(rows), path)


def _plain(tasks, root):
  """Tasks with their files relative to `root`, to compare loads of different copies."""
  return [
    (t.task_id, t.question, t.gold, t.level, [p.relative_to(root) for p in t.files]) for t in tasks
  ]


# ------------------------------------------------------------------------------------ loader


def test_load_jsonl_validation():
  tasks = load_gaia(FIXTURE, "validation")
  assert [t.task_id for t in tasks] == ["fx-0001", "fx-0002", "fx-0003", "fx-0004"]
  assert [t.level for t in tasks] == [1, 2, 2, 3]  # "Level": "2" in the jsonl becomes 2
  assert [t.gold for t in tasks] == ["3", "Onhava", "1250", "blue, red, yellow"]
  split_dir = FIXTURE / "2023" / "validation"
  assert tasks[0].files == (split_dir / "fx-0001.txt",) and tasks[0].files[0].is_file()
  assert tasks[1].files == () and tasks[3].files == ()
  assert tasks[2].question == "Sum the price column of the attached CSV."
  assert all(t.scorable for t in tasks)
  assert [t.task_id for t in load_gaia(FIXTURE, levels={2})] == ["fx-0002", "fx-0003"]
  with pytest.raises(dataclasses.FrozenInstanceError):
    tasks[0].gold = "4"  # type: ignore[misc]


def test_load_parquet_matches_jsonl(tmp_path, monkeypatch):
  root = _copy(tmp_path)
  split_dir = root / "2023" / "validation"
  from_jsonl = _plain(load_gaia(root), root)
  monkeypatch.setenv("HOME", str(tmp_path))
  assert _plain(load_gaia("~/gaia"), root) == from_jsonl  # "~" is expanded
  # the hub's current layout: metadata.parquet (preferred over metadata.jsonl when both exist)
  rows = [{**r, "Level": int(r["Level"])} for r in _rows("validation")]  # one column type
  _write_parquet(split_dir / "metadata.parquet", rows[:2])
  assert _plain(load_gaia(root), root) == from_jsonl[:2]
  _write_parquet(split_dir / "metadata.parquet", rows)
  (split_dir / "metadata.jsonl").unlink()
  assert _plain(load_gaia(root), root) == from_jsonl
  # per-level files only: concatenated in level order
  (split_dir / "metadata.parquet").unlink()
  for level in (1, 2, 3):
    _write_parquet(
      split_dir / f"metadata.level{level}.parquet", [r for r in rows if int(r["Level"]) == level]
    )
  assert _plain(load_gaia(root), root) == from_jsonl
  assert _plain(load_gaia(root, levels=[3]), root) == from_jsonl[3:]


def test_test_split_answers_are_kept_but_unscorable():
  tasks = load_gaia(FIXTURE, "test")
  assert [(t.task_id, t.gold, t.scorable) for t in tasks] == [
    ("fx-t001", "?", False),
    ("fx-t002", "?", False),
  ]
  assert tasks[0].files == (FIXTURE / "2023" / "test" / "fx-t001.txt",)
  for scorer in (score_official, score_release):
    with pytest.raises(ValueError, match="hidden test-split answer"):
      scorer("?", tasks[0].gold)  # the official string rule would otherwise say True
  assert GaiaTask("x", "q", " ? ", 1).scorable is False
  assert GaiaTask("x", "q", "?!", 1).scorable is True


def test_load_errors_name_the_path_or_field(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"no GAIA split folder .*2023/dev"):
    load_gaia(FIXTURE, "dev")
  with pytest.raises(ValueError, match=r"levels must be a subset of \{1, 2, 3\}, got \[0, 4\]"):
    load_gaia(FIXTURE, levels=[4, 0])
  root = _copy(tmp_path)
  split_dir = root / "2023" / "validation"
  (split_dir / "fx-0003.csv").unlink()
  with pytest.raises(FileNotFoundError, match=r"fx-0003.*'fx-0003.csv' not found; tried .*fx-0003"):
    load_gaia(root)
  # the file_path column is a fallback location, relative to the dataset root
  rows = _rows("validation")
  (root / "elsewhere").mkdir()
  (root / "elsewhere" / "fx-0003.csv").write_text("item,price\n")
  rows[2]["file_path"] = "elsewhere/fx-0003.csv"
  (split_dir / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert load_gaia(root)[2].files == (root / "elsewhere" / "fx-0003.csv",)

  def broken(change) -> str:
    bad = [dict(r) for r in rows]
    change(bad)
    (split_dir / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
    with pytest.raises(ValueError) as e:
      load_gaia(root)
    return str(e.value)

  assert "row 1: missing field(s) ['Final answer']" in broken(lambda b: b[1].pop("Final answer"))
  assert "field 'Level' is 'two'" in broken(lambda b: b[1].update(Level="two"))
  assert "field 'Level' is 4, outside 1..3" in broken(lambda b: b[1].update(Level=4))
  assert "duplicate task_id 'fx-0001'" in broken(lambda b: b[3].update(task_id="fx-0001"))
  (split_dir / "metadata.jsonl").write_text('{"task_id": \n')
  with pytest.raises(ValueError, match="line 1 is not JSON"):
    load_gaia(root)
  (split_dir / "metadata.jsonl").unlink()
  with pytest.raises(FileNotFoundError, match=r"no GAIA metadata in .*validation"):
    load_gaia(root)


# -------------------------------------------------------------------------------------- hub


class _GatedHub(http.server.BaseHTTPRequestHandler):
  """A local stand-in for the hub that refuses like huggingface.co does for a gated repo."""

  def do_GET(self):  # noqa: N802
    self.send_response(403)
    self.send_header("X-Error-Code", "GatedRepo")
    self.send_header("X-Error-Message", f"Access to dataset {REPO_ID} is restricted.")
    self.send_header("Content-Length", "0")
    self.end_headers()

  do_HEAD = do_GET

  def log_message(self, *args):
    pass


def test_hub_errors_are_clear(tmp_path):
  # unreachable: nothing listens on port 9 of the loopback, and nothing is cached
  with pytest.raises(RuntimeError, match="not reachable and no copy is cached.*load_gaia"):
    load_gaia_hub(cache_dir=tmp_path / "c1", token=False, endpoint="http://127.0.0.1:9")
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _GatedHub)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    with pytest.raises(RuntimeError, match="is gated and access was refused.*accept the terms"):
      load_gaia_hub(
        cache_dir=tmp_path / "c2",
        token=False,
        endpoint=f"http://127.0.0.1:{server.server_address[1]}",
      )
  finally:
    server.shutdown()
    server.server_close()


def test_hub_download_feeds_load_gaia(monkeypatch):
  import huggingface_hub

  calls = []

  def fake_snapshot_download(**kwargs):
    calls.append(kwargs)
    return str(FIXTURE)

  monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
  tasks = load_gaia_hub("validation", levels={1})
  assert [t.task_id for t in tasks] == ["fx-0001"]
  assert calls[0]["repo_id"] == REPO_ID and calls[0]["repo_type"] == "dataset"
  assert calls[0]["allow_patterns"] == ["2023/validation/*"]


# ----------------------------------------------------------------------------------- scorers

# (prediction, gold, release, official). The release: outer punctuation stripped, inner
# whitespace kept, commas dropped only to compare floats. The leaderboard: gold-typed
# (number / list / string), `$ % ,` dropped from numbers, whitespace and punctuation dropped
# from strings, list elements compared in order.
CASES = [
  ("3", "3", True, True),
  ("3.0", "3", True, True),
  ("1e3", "1000", True, True),
  ("1,000", "1000", True, True),
  ("$1,000", "1000", False, True),
  ("17%", "17", False, True),
  ("17 km", "17", False, False),
  ("3.14159", "3.14", False, False),
  ("  Paris.  ", "paris", True, True),
  ("The Answer!", "the answer", True, True),
  ("(x)", "x", True, True),
  ("U.S.A.", "USA", False, True),
  ("Sea Gull", "seagull", False, True),
  ("new  york", "new york", False, True),
  ("new-york", "New York", False, True),  # a string gold: punctuation removed
  ("St. Petersburg", "Saint Petersburg", False, False),
  ("a, b", "a,b", False, True),
  ("a; b", "a, b", False, True),
  ("A,B", "a, b", False, True),
  ("b, a", "a, b", False, False),
  ("a, b, c", "a, b", False, False),
  ("new-york, paris", "New York, Paris", False, False),  # list elements keep punctuation
  ("$5; 7%", "5, 7", False, True),
  ("1,000, 2", "1000, 2", False, False),  # the comma of 1,000 splits the list
  ("1000", "$1,000", False, False),  # a "$1,000" gold is a 2-element list to the leaderboard
  ("a\\sb", "a b", True, False),  # the release's r"\\s+" turns a literal \s into a space
  ("", "x", False, False),
  (None, "x", False, False),
  (None, "None", False, True),  # the leaderboard scores a missing answer as the text "None"
]


@pytest.mark.parametrize("pred,gold,release,official", CASES)
def test_scorers(pred, gold, release, official):
  assert score_release(pred, gold) is release
  assert score_official(pred, gold) is official


def test_scorers_disagree_both_ways():
  assert any(r and not o for _, _, r, o in CASES) and any(o and not r for _, _, r, o in CASES)
  with pytest.raises(TypeError, match="gold must be a str"):
    score_official("3", 3)  # type: ignore[arg-type]


def test_extract_answer_text():
  raw = "<think>maybe <answer>7</answer></think> so <answer> 42 </answer> <answer>8</answer>"
  assert extract_answer_text(raw) == "42"
  # as the release: the lazy match cannot hold a closing tag, so the "peel repeatedly" loop
  # leaves the inner opening tag of a nested wrapper
  assert extract_answer_text("<answer><answer> 42 </answer></answer>") == "<answer> 42"
  assert extract_answer_text("<think>x</think>\n  plain answer ") == "plain answer"
  assert extract_answer_text("no tags") == "no tags"
  assert extract_answer_text("<ANSWER>Rome</ANSWER> trailing") == "Rome"
