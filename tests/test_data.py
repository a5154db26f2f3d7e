import numpy as np
import pytest
import torch
from PIL import Image

from finequant.data import inspect_data, load_data, make_loader, stratified_split
from finequant.errors import DataError, SpecError
from finequant.models import load_model


def test_mnist5k_has_10_classes_of_500():
    d = load_data("mnist5k")
    assert d.kind == "image" and len(d) == 5000
    assert set(d.class_counts().values()) == {500}
    assert d.items[0].shape == (28, 28) and d.items[0].dtype == np.uint8


def test_digits_and_rotten_tomatoes():
    d = load_data("digits")
    assert len(d) == 1797 and d.items[0].shape == (8, 8) and d.items[0].max() <= 255
    t = load_data("rotten_tomatoes")
    assert t.kind == "text" and t.classes == ["rotten", "fresh"]
    assert t.class_counts() == {"rotten": 2411, "fresh": 2455}


def test_split_is_stratified_deterministic_and_disjoint():
    d = load_data("digits")
    a, b = stratified_split(d, seed=3), stratified_split(d, seed=3)
    c = stratified_split(d, seed=4)
    assert a.sizes() == b.sizes() and np.array_equal(a.test.labels, b.test.labels)
    assert [x.tobytes() for x in a.test.items] != [x.tobytes() for x in c.test.items]
    for part in (a.train, a.val, a.test):
        frac = np.bincount(part.labels, minlength=10) / len(part)
        assert np.abs(frac - 0.1).max() < 0.02
    assert sum(a.sizes().values()) == len(d)
    small = stratified_split(d, seed=0, max_samples=300)
    assert 280 <= sum(small.sizes().values()) <= 320


def test_grayscale_becomes_three_channels_at_model_size():
    m = load_model("timm:resnet18", pretrained=False, num_classes=10)
    m.preprocess = m.preprocess.with_size(32)
    x, y = next(iter(make_loader(load_data("digits"), m, batch_size=5)))
    assert x.shape == (5, 3, 32, 32) and y.dtype == torch.long


def test_text_loader_tokenizes():
    m = load_model("minilm")
    x, y = next(iter(make_loader(load_data("rotten_tomatoes"), m, batch_size=4)))
    assert set(x) >= {"input_ids", "attention_mask"} and x["input_ids"].shape[0] == 4


def test_imagefolder_skips_corrupt_files_or_fails_when_strict(image_folder):
    (image_folder / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    (image_folder / "dog" / "empty.jpg").write_bytes(b"")
    d = load_data(f"imagefolder:{image_folder}")
    assert len(d) == 18 and d.classes == ["cat", "dog", "owl"]
    assert len(d.warnings) == 2 and any("empty.jpg" in w for w in d.warnings)
    with pytest.raises(DataError, match="broken.png"):
        load_data(f"imagefolder:{image_folder}", strict=True)


def test_imagefolder_empty_class_is_an_error(image_folder):
    (image_folder / "zebra").mkdir()
    with pytest.raises(DataError, match="zebra"):
        load_data(f"imagefolder:{image_folder}")


def test_inspect_flags_duplicates_and_imbalance(image_folder):
    import shutil

    for i in range(6, 30):
        shutil.copy(image_folder / "cat" / "0.png", image_folder / "cat" / f"{i}.png")
    r = inspect_data(load_data(f"imagefolder:{image_folder}"))
    assert r["class_counts"] == {"cat": 30, "dog": 6, "owl": 6}
    assert any("duplicate" in p for p in r["problems"]) and any("imbalance" in p for p in r["problems"])


def test_csv_text_source_and_missing_columns(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("review,stars\ngreat,pos\nawful,neg\n,pos\nfine,pos\n")
    d = load_data(f"csv:{p}?text=review&label=stars")
    assert d.kind == "text" and d.items == ["great", "awful", "fine"] and d.classes == ["neg", "pos"]
    assert d.warnings == ["row 4: empty review"]
    with pytest.raises(DataError, match=r"missing column.*text=COL"):
        load_data(f"csv:{p}")
    with pytest.raises(SpecError, match="unknown option"):
        load_data(f"csv:{p}?txt=review")


def test_too_small_class_cannot_split(image_folder):
    d = load_data(f"imagefolder:{image_folder}").subset([0, 1, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15])
    with pytest.raises(DataError, match="'cat' has 2 samples"):
        stratified_split(d)


def _folder(root, classes, n, seed):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, size=(12, 12, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_given_splits_are_used_as_given(tmp_path):
    """train/ val/ test/ folders, a csv split column, or a separate test set: no re-split."""
    from finequant.data import load_splits

    root = tmp_path / "split"
    _folder(root / "train", ["a", "b"], 6, 0)
    _folder(root / "val", ["a", "b"], 2, 1)
    _folder(root / "test", ["b", "a"], 5, 2)
    s = load_splits(f"imagefolder:{root}")
    assert s.sizes() == {"train": 12, "val": 4, "test": 10}
    assert all("/test/" in str(p) for p in s.test.items) and s.test.classes == ["a", "b"]
    csv_path = tmp_path / "t.csv"
    rows = ["text,label,split"] + [f"t{i},{'pos' if i % 2 else 'neg'},{'test' if i < 4 else 'train'}" for i in range(24)]
    csv_path.write_text("\n".join(rows))
    s = load_splits(f"csv:{csv_path}?split=split")
    assert len(s.test) == 4 and len(s.train) + len(s.val) == 20 and len(s.val) >= 2  # val carved from train
    pool = tmp_path / "pool"
    _folder(pool, ["a", "b"], 10, 3)
    other = tmp_path / "other"
    _folder(other, ["a", "b"], 7, 4)
    s = load_splits(f"imagefolder:{pool}", test_data=f"imagefolder:{other}")
    assert len(s.test) == 14 and len(s.train) + len(s.val) == 20


def test_csv_rows_with_stray_commas_are_errors_not_new_classes(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("text,label\ngood film,pos\nbad, really bad,neg\n")
    with pytest.raises(DataError, match="row 3 has more fields.*quote fields.*bad_rows=skip"):
        load_data(f"csv:{path}")
    path.write_text("text,label\ngood film,pos\nbad, really bad,neg\nfine,pos\nshort\n")
    data = load_data(f"csv:{path}?bad_rows=skip")
    assert data.items == ["good film", "fine"] and data.classes == ["pos"]
    assert data.warnings == ["row 3 has more fields than the header's 2", "row 5 has fewer fields than the header's 2"]
    with pytest.raises(DataError, match="bad_rows='maybe'"):
        load_data(f"csv:{path}?bad_rows=maybe")


def test_eval_data_is_scored_in_full_with_classes_matched_by_name(tmp_path):
    from finequant.data import align_classes

    folder = tmp_path / "f"
    _folder(folder, ["b", "c"], 3, 0)
    data = load_data(f"imagefolder:{folder}")
    aligned = align_classes(data, ["a", "b", "c"])
    assert aligned.classes == ["a", "b", "c"] and sorted(set(aligned.labels.tolist())) == [1, 2]
    with pytest.raises(DataError, match=r"\['c'\] are not among"):
        align_classes(data, ["a", "b"])
