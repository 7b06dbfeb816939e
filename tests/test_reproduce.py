"""scripts/reproduce.py's own logic: the photo split of the EfficientNet-Lite0 bench never scores a photo it
calibrated on, a merged results.json can be merged again with a new bench's run, and rewriting RESULTS.md keeps
its hand-written notes."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import photos  # noqa: E402
from reproduce import HAND_NOTES, load_runs, with_hand_notes  # noqa: E402


@pytest.mark.parametrize("scored", [1, 3, 5])
def test_photo_split_is_disjoint_and_complete(scored):
    names = [f"p{i}" for i in range(7)]
    fit, score = photos.split_photos(names, scored)
    assert not set(fit) & set(score)
    assert sorted(fit + score) == sorted(names) and len(score) == scored


def test_photo_split_needs_photos_on_both_sides():
    with pytest.raises(ValueError):
        photos.split_photos(["a", "b"], 2)


def test_photo_sets_crops_come_from_their_own_photos(monkeypatch):
    """Each photo a constant colour: the scored crops hold only the scored photos' colours."""
    import numpy as np

    colours = {f"p{i}": np.full((240, 300, 3), i / 10, np.float32) for i in range(5)}
    monkeypatch.setattr(photos, "load_photos", lambda: colours)
    fit, fit_x, score, score_x = photos.photo_sets(per_photo=2, scored=2)
    undo = lambda x: np.round((x * photos.IMAGENET_STD + photos.IMAGENET_MEAN)[:, 0, 0, 0] * 10)  # noqa: E731
    assert set(undo(score_x)) == {int(n[1:]) for n in score} and set(undo(fit_x)) == {int(n[1:]) for n in fit}
    assert len(score_x) == 4 and len(fit_x) == 6


def test_load_runs_expands_a_merged_file(tmp_path):
    run = {"benches": {"a": {"rows": {}}}, "compiled": {}, "seconds": 1.0, "argv": ["--bench", "a"]}
    new = {**run, "argv": ["--bench", "b"]}
    (tmp_path / "merged.json").write_text(json.dumps({"benches": {}, "compiled": {}, "runs": [run, run]}))
    (tmp_path / "new.json").write_text(json.dumps(new))
    assert load_runs([tmp_path / "merged.json", tmp_path / "new.json"]) == [run, run, new]


def test_rewriting_the_report_keeps_the_hand_written_notes():
    old = "# Old\n\n| a | 1 |\n" + HAND_NOTES + " after the run)\n\n- a note\n"
    assert with_hand_notes("# New\n", old) == "# New\n" + HAND_NOTES + " after the run)\n\n- a note\n"
    assert with_hand_notes("# New\n", "# Old, no notes\n") == "# New\n"
