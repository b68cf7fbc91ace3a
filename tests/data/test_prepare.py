"""The prepare stage end to end: every bad input is reported with its reason, the rest is kept, and the
dataset is the same however it is run."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from facesmith.attributes.schema import CELEBA_ATTRIBUTES
from facesmith.data.config import PrepareConfig
from facesmith.data.manifest import read_manifest
from facesmith.data.prepare import PROGRESS_FILE, run_prepare
from facesmith.errors import FacesmithError
from factory import photo, save_photo

from .facefixtures import aligned_config, read_report, stored_rows

SIZE = (96, 96)


def messy_folder(root):
    """Good photos in every pixel format next to every kind of broken file."""
    root.mkdir(parents=True)
    for seed in range(3):
        save_photo(root / f"good{seed}.jpg", seed, SIZE, quality=95)
    for seed, mode in enumerate(["CMYK", "L", "P", "RGBA"], start=10):
        photo(seed, SIZE, mode=mode).save(root / f"mode_{mode}.{'jpg' if mode == 'CMYK' else 'png'}")
    wide = (np.asarray(photo(20, SIZE).convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(wide, mode="I;16").save(root / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    photo(21, (120, 80)).save(root / "rotated.jpg", exif=exif, quality=95)
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.png").write_text("hello")
    buffer = io.BytesIO()
    photo(22, SIZE).save(buffer, "JPEG")
    (root / "truncated.jpg").write_bytes(buffer.getvalue()[:300])
    Image.new("L", (1200, 1000)).save(root / "bomb.png")
    shutil.copy(root / "good0.jpg", root / "good0_copy.jpg")
    photo(1, SIZE).resize((80, 80)).save(root / "good1_small_copy.jpg", quality=80)
    photo(23, SIZE).filter(ImageFilter.GaussianBlur(5)).save(root / "blurry.png")
    save_photo(root / "tiny.png", 24, (12, 12))


KEPT = {"good0.jpg", "good1.jpg", "good2.jpg", "mode_CMYK.jpg", "mode_L.png", "mode_P.png", "mode_RGBA.png"}
KEPT |= {"sixteen.png", "rotated.jpg"}
REJECTED = {
    "empty file": 1,
    "not an image": 1,
    "corrupt or truncated": 1,
    "too many pixels": 1,
    "exact duplicate": 1,
    "near duplicate": 1,
    "blurry": 1,
    "too small": 1,
    "caption file is not UTF-8": 1,
}


@pytest.fixture
def sources(tmp_path):
    messy_folder(tmp_path / "messy")
    kohya = tmp_path / "kohya"
    save_photo(kohya / "5_anna" / "good0.jpg", 30, SIZE)  # same name as in messy/, other picture
    (kohya / "5_anna" / "good0.txt").write_text("anna, smiling")
    save_photo(kohya / "5_anna" / "latin.jpg", 31, SIZE)
    (kohya / "5_anna" / "latin.txt").write_bytes("\xe9t\xe9".encode("latin-1"))
    return [tmp_path / "messy", kohya]


def test_bad_inputs_are_counted_and_the_rest_kept(tmp_path, sources):
    no_classifier = str(tmp_path)  # holds no attribute classifier: unlabeled photos get the generic caption
    out = run_prepare(
        aligned_config(sources, tmp_path / "out", max_pixels=1_000_000, attribute_classifier=no_classifier)
    )
    report = read_report(out)
    assert report["rejected"] == REJECTED
    rows = stored_rows(out)
    assert {r["source_file"].split("/")[-1] for r in rows if r["source"] == "folder"} == KEPT
    assert report["kept"] == len(KEPT) + 1 and report["total"] == len(KEPT) + 1 + sum(REJECTED.values())
    anna = next(r for r in rows if r["source"] == "kohya")
    assert anna["text"] == "anna, smiling" and anna["repeats"] == 5
    generic = [r for r in rows if r["source"] == "folder"]
    assert all(r["text"] == PrepareConfig.generic_caption for r in generic)
    assert any("generic caption" in n for n in report["notes"])
    assert any("file names occur more than once" in n for n in report["notes"])
    for row in rows:
        with Image.open(out / row["file_name"]) as image:
            assert image.size == (32, 32) and image.mode == "RGB"
        assert row["split"] in ("train", "val") and row["width"] == 32
    assert len(list((out / "images").iterdir())) == len(rows)  # rejected duplicates left no file
    md = (out / "report.md").read_text()
    assert "| near duplicate | 1 |" in md and "contact_sheet.png" in md
    assert (out / "contact_sheet.png").is_file()
    assert PrepareConfig.load(out / "prepare.toml").max_pixels == 1_000_000


def test_same_dataset_from_rerun_resume_and_more_workers(tmp_path, sources):
    config = aligned_config(sources, tmp_path / "a", max_pixels=1_000_000)
    first = (run_prepare(config) / "metadata.jsonl").read_text()
    # Interrupt: keep 4 decisions and half a line, lose the manifest; the rerun resumes and agrees.
    progress = tmp_path / "a" / PROGRESS_FILE
    lines = progress.read_text().splitlines()
    progress.write_text("\n".join(lines[:4]) + "\n" + lines[4][:10])
    (tmp_path / "a" / "metadata.jsonl").unlink()
    assert (run_prepare(config) / "metadata.jsonl").read_text() == first
    assert len(progress.read_text().splitlines()) == len(lines)  # the cut line was replaced, not appended to
    two = aligned_config(sources, tmp_path / "b", max_pixels=1_000_000, workers=2)
    rows_b = stored_rows(run_prepare(two))
    rows_a = [json.loads(line) for line in first.splitlines()]
    assert [(r["text"], r["split"], r["phash"]) for r in rows_a] == [
        (r["text"], r["split"], r["phash"]) for r in rows_b
    ]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert (tmp_path / "a" / ra["file_name"]).read_bytes() == (
            tmp_path / "b" / rb["file_name"]
        ).read_bytes()
    # A source that changed under a resumed folder is redone from scratch, not mixed with old decisions.
    (sources[0] / "good2.jpg").unlink()
    changed = stored_rows(run_prepare(config))
    assert len(changed) == len(first.splitlines()) - 1
    assert len(list((tmp_path / "a" / "images").iterdir())) == len(changed)


def test_celeba_captions_attributes_and_table_problems(tmp_path):
    src = tmp_path / "celeba"
    for i in range(1, 5):
        save_photo(src / "img_align_celeba" / f"00000{i}.jpg", i, (89, 109))
    header = " ".join(CELEBA_ATTRIBUTES)
    on = {"Male", "Smiling", "Eyeglasses", "Young"}
    row = " ".join("1" if n in on else "-1" for n in CELEBA_ATTRIBUTES)
    lines = ["202599", header] + [f"00000{i}.jpg {row}" for i in (1, 2, 3, 7)]
    (src / "list_attr_celeba.txt").write_text("\r\n".join(lines) + "\r\n")
    out = run_prepare(aligned_config([src], tmp_path / "out", size=64, templates=["sks {gender}, {tags}"]))
    rows = stored_rows(out)
    assert len(rows) == 3 and rows[0]["attributes"]["Eyeglasses"] == 1 and rows[0]["attributes"]["Bald"] == 0
    assert rows[0]["text"] == "sks man, eyeglasses, smiling, young"
    report = read_report(out)
    assert report["rejected"] == {"missing from the attribute table": 1}
    assert report["attribute_balance"]["Eyeglasses"] == {"known": 3, "positive": 3}
    assert "1 attribute rows name files that do not exist" in report["notes"][0]


def test_val_split_is_deterministic_and_by_identity(tmp_path):
    src = tmp_path / "celeba"
    names = [f"{i:06d}.jpg" for i in range(1, 41)]
    for i, name in enumerate(names):
        save_photo(src / name, 100 + i, (40, 40))
    header = "file," + ",".join(CELEBA_ATTRIBUTES)
    body = "\n".join(name + "," + ",".join("0" * 1 for _ in CELEBA_ATTRIBUTES) for name in names)
    (src / "list_attr_celeba.csv").write_text(header + "\n" + body + "\n")
    (src / "identity_CelebA.txt").write_text("\n".join(f"{n} {i // 4}" for i, n in enumerate(names)))
    rows = stored_rows(run_prepare(aligned_config([src], tmp_path / "out", val_fraction=0.3)))
    by_identity: dict[str, set] = {}
    for r in rows:
        by_identity.setdefault(r["identity"], set()).add(r["split"])
    assert all(len(splits) == 1 for splits in by_identity.values())  # an identity never spans splits
    assert {"train", "val"} == set().union(*by_identity.values())


def test_detection_path_aligns_faces_and_rejects_non_faces(tmp_path, shared_data):
    src = tmp_path / "photos"
    src.mkdir()
    for name in ("000001.jpg", "000002.jpg", "000003.jpg"):
        shutil.copy(shared_data / "celeba" / "images" / name, src / name)
    save_photo(src / "noise.jpg", 1, (120, 120))
    config = PrepareConfig(sources=[str(src)], out_dir=str(tmp_path / "out"), size=64, workers=1)
    out = run_prepare(config)
    rows = stored_rows(out)
    assert len(rows) == 3 and read_report(out)["rejected"] == {"no face": 1}
    assert all(len(r["landmarks"]) == 5 and r["score"] > 0.9 and r["outside"] < 0.5 for r in rows)
    with pytest.raises(FacesmithError, match="kept 0 of 4 images.*use a smaller --size"):
        run_prepare(PrepareConfig(sources=[str(src)], out_dir=str(tmp_path / "big"), size=512, workers=1))
    assert read_report(tmp_path / "big")["rejected"] == {"no face": 1, "too small": 3}


def test_output_folder_problems_are_user_errors(tmp_path):
    src = tmp_path / "src"
    save_photo(src / "a.jpg", 1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FacesmithError, match="is a file"):
        run_prepare(aligned_config([src], tmp_path / "file"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    with pytest.raises(FacesmithError, match="not empty"):
        run_prepare(aligned_config([src], tmp_path / "busy"))
    run_prepare(aligned_config([src], tmp_path / "ok"))
    with pytest.raises(FacesmithError, match="other settings"):
        run_prepare(aligned_config([src], tmp_path / "ok", size=48))
    with pytest.raises(FacesmithError, match="is not a folder"):
        run_prepare(aligned_config([tmp_path / "nowhere"], tmp_path / "new"))
    with pytest.raises(FacesmithError, match="unknown"):
        run_prepare(aligned_config([src], tmp_path / "new", format="lmdb"))
    # An output inside a source would be read back as input on the next run; the reverse loops the same.
    for inside in (src, src / "dataset", src / "deeper" / "dataset"):
        with pytest.raises(FacesmithError, match="overlap"):
            run_prepare(aligned_config([src], inside))
    with pytest.raises(FacesmithError, match="overlap"):
        run_prepare(aligned_config([tmp_path / "ok" / "images"], tmp_path / "ok"))
    assert not (src / "dataset").exists() and sorted(p.name for p in src.iterdir()) == ["a.jpg"]


def test_cli_prepare_and_its_errors(tmp_path):
    from typer.testing import CliRunner

    from facesmith.cli import app

    src = tmp_path / "src"
    save_photo(src / "a.jpg", 1)
    save_photo(src / "b.jpg", 2)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["prepare", str(src), "-o", str(out), "--aligned", "--size", "32"])
    assert result.exit_code == 0, result.output
    assert "kept 2 of 2" in result.output and len(stored_rows(out)) == 2
    result = CliRunner().invoke(app, ["prepare", str(tmp_path / "missing"), "-o", str(tmp_path / "o2")])
    assert result.exit_code == 2 and "is not a folder" in result.output and "Traceback" not in result.output
    again = CliRunner().invoke(app, ["prepare", "--config", str(out / "prepare.toml")])
    assert again.exit_code == 0, again.output


def test_a_second_run_on_the_same_folder_is_refused(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    src = tmp_path / "src"
    save_photo(src / "a.jpg", 1)
    config = aligned_config([src], tmp_path / "out")
    run_prepare(config)
    with open(tmp_path / "out" / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(FacesmithError, match="being written by another"):
            run_prepare(config)
    assert len(stored_rows(run_prepare(config))) == 1


def test_unlabeled_faces_are_captioned_by_the_attribute_classifier(tmp_path):
    import factory

    classifier = factory.tiny_attribute_classifier(
        tmp_path / "clf", factory.synthetic_face_dataset(tmp_path / "synthetic", count=24), epochs=2
    )
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(6):
        factory.synthetic_face({"Eyeglasses": i % 2, "Smiling": 1}, seed=500 + i, side=96).save(
            src / f"{i}.png"
        )
    out = run_prepare(aligned_config([src], tmp_path / "out", size=64, attribute_classifier=str(classifier)))
    rows = stored_rows(out)
    assert len(rows) == 6 and all(r["caption_from"] == "predicted" and r["attributes"] == {} for r in rows)
    assert all(
        len(r["predicted_attributes"]) >= 40 and r["text"] != PrepareConfig.generic_caption for r in rows
    )
    assert any("predicted by the attribute classifier" in n for n in read_report(out)["notes"])
    # Without a classifier the faces keep the generic caption, and the report says why.
    bare = run_prepare(aligned_config([src], tmp_path / "bare", size=64, attribute_classifier=str(tmp_path)))
    assert {r["caption_from"] for r in stored_rows(bare)} == {"generic"}
    assert any("keep the generic caption" in n for n in read_report(bare)["notes"])


def test_templates_come_from_toml(tmp_path):
    from typer.testing import CliRunner

    from facesmith.cli import app

    src = tmp_path / "utk"
    save_photo(src / "70_0_1_2017.jpg", 1)
    save_photo(src / "9_1_0_2017.jpg", 2)
    toml = tmp_path / "prepare.toml"
    toml.write_text(
        'size = 32\naligned = true\nworkers = 1\ntemplates = ["sks, {age} {ethnicity} {gender}"]\n'
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["prepare", str(src), "-o", str(out), "--config", str(toml)])
    assert result.exit_code == 0, result.output
    assert [r["text"] for r in stored_rows(out)] == ["sks, senior Black man", "sks, child white girl"]
    assert PrepareConfig.load(out / "prepare.toml").templates == ["sks, {age} {ethnicity} {gender}"]


def test_a_file_name_that_is_not_utf8_is_kept_and_reruns_work(tmp_path):
    src = tmp_path / "src"
    save_photo(src / "a.jpg", 1)
    raw = os.path.join(os.fsencode(src), b"caf\xe9.jpg")
    try:
        save_photo(Path(os.fsdecode(raw)), 2)
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    config = aligned_config([src], tmp_path / "out")
    out = run_prepare(config)
    first = (out / "metadata.jsonl").read_bytes()
    first.decode("utf-8")  # still UTF-8: the odd byte is a \udcXX escape
    rows = read_manifest(out)
    assert len(rows) == 2
    assert os.fsencode(rows[1].source_file) == raw  # the escaped name names the real file
    (out / "metadata.jsonl").unlink()
    assert (run_prepare(config) / "metadata.jsonl").read_bytes() == first
    # A folder name can't be escaped in prepare.toml: that is refused in one line, before any work.
    odd_source = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"fotos\xe9")))
    save_photo(odd_source / "b.jpg", 3)
    with pytest.raises(FacesmithError, match="not valid UTF-8: rename it"):
        run_prepare(aligned_config([odd_source], tmp_path / "out2"))
    assert not (tmp_path / "out2").exists()


def test_keeping_nothing_fails_and_says_what_to_do(tmp_path):
    from typer.testing import CliRunner

    from facesmith.cli import app

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "notes.jpg").write_text("not a photo")
    save_photo(mixed / "real.jpg", 1)
    # No cause is most of them: the counts by reason are the message.
    with pytest.raises(FacesmithError, match=r"kept 0 of 2 images \(1 not an image, 1 too many pixels\)"):
        run_prepare(aligned_config([mixed], tmp_path / "out", max_pixels=1))
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.jpg").write_text("not a photo")
    save_photo(src / "real.jpg", 1, (8, 8))
    result = CliRunner().invoke(app, ["prepare", str(src), "-o", str(tmp_path / "cli"), "--aligned"])
    assert result.exit_code == 2 and "kept 0 of 4" in result.output and "Traceback" not in result.output
    assert "3 of 4 rejected as not an image" in result.output  # most share one cause: the advice leads
    assert read_report(tmp_path / "cli")["kept"] == 0  # the report that explains it is still written
    (tmp_path / "empty").mkdir()
    with pytest.raises(FacesmithError, match="found no images in"):
        run_prepare(aligned_config([tmp_path / "empty"], tmp_path / "none"))


def test_tight_crops_without_aligned_point_to_aligned(tmp_path, shared_data):
    src = tmp_path / "utk"
    src.mkdir()
    for path in sorted((shared_data / "utkface" / "images").glob("*.jpg"))[:4]:
        shutil.copy(path, src / path.name)
    with pytest.raises(FacesmithError, match="rejected as crop mostly outside the photo.*use --aligned"):
        run_prepare(PrepareConfig(sources=[str(src)], out_dir=str(tmp_path / "out"), workers=1))
    assert "use --aligned" in (tmp_path / "out" / "report.md").read_text()
    kept = run_prepare(aligned_config([src], tmp_path / "aligned", size=128))
    assert read_report(kept)["kept"] == 4 and read_report(kept)["advice"] is None


def test_the_sha256_is_of_the_bytes_whose_pixels_are_kept(tmp_path):
    """A file rewritten while prepare reads it: a FIFO gives one photo to the first read, another to a
    second; the record must pair the hash and the crop of the same one."""
    import hashlib
    import threading

    from facesmith.data.align import center_crop
    from facesmith.data.prepare import Task, process_image
    from facesmith.data.quality import open_photo
    from facesmith.data.sources import SourceItem

    versions = []
    for seed in (1, 2):
        buffer = io.BytesIO()
        photo(seed, SIZE).save(buffer, "PNG")
        versions.append(buffer.getvalue())
    fifo = tmp_path / "face.png"
    os.mkfifo(fifo)
    finished = threading.Event()

    def writer_fd() -> int | None:  # a write end if some reader has the FIFO open
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return None

    def rewrite():  # each reader that opens the FIFO gets the next version
        for data in versions:
            while (fd := writer_fd()) is None:
                if finished.wait(0.01):
                    return
            os.set_blocking(fd, True)
            os.write(fd, data)
            os.close(fd)
            finished.wait(0.5)  # that reader reads to the end and closes; the next version is a new read

    writer = threading.Thread(target=rewrite, daemon=True)
    writer.start()
    config = aligned_config([tmp_path], tmp_path / "out")
    out_path = tmp_path / "out" / "images" / "000000.png"
    record = process_image(Task(0, SourceItem(fifo, "folder"), out_path, config))
    finished.set()
    writer.join(5)
    assert "rejected" not in record, record
    assert record["sha256"] == hashlib.sha256(versions[0]).hexdigest()
    with Image.open(out_path) as kept:
        (tmp_path / "first.png").write_bytes(versions[0])
        expected = center_crop(open_photo(tmp_path / "first.png"), 32)
        assert np.array_equal(np.asarray(kept), np.asarray(expected))


@pytest.mark.slow
def test_a_large_rotated_jpeg_is_decoded_small_and_recorded_in_full_pixels(tmp_path, shared_data):
    from facesmith.data.faces import detect_faces

    face = Image.open(shared_data / "utkface" / "images" / "100_0_0_20170112215240346.jpg.chip.jpg")
    face = face.convert("RGB").resize((1200, 1200), Image.Resampling.BICUBIC)
    upright = Image.fromarray(np.random.default_rng(0).integers(40, 90, (120, 90, 3), dtype=np.uint8)).resize(
        (3600, 4800)
    )
    upright.paste(face, (1200, 1500))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side, 4800x3600 (17 Mpx): decoded at 1/2, searched at 1/4
    src = tmp_path / "src"
    src.mkdir()
    upright.transpose(Image.Transpose.ROTATE_90).save(src / "big.jpg", exif=exif, quality=90)
    expected = np.array(detect_faces(face)[0].landmarks) + (1200, 1500)
    crops, landmarks = {}, []
    for size in (128, 1024):  # 1024 needs more than the 1/2 decode: decoded again at full size
        out = run_prepare(PrepareConfig(sources=[str(src)], out_dir=str(tmp_path / f"o{size}"), size=size))
        (row,) = stored_rows(out)
        # In the upright photo's full pixels: MTCNN's own spread between scales is ~15% of the eye
        # distance here; a missed rotation or scale would be off by hundreds to thousands of pixels.
        eye_distance = np.hypot(*(expected[1] - expected[0]))
        assert np.abs(np.array(row["landmarks"])[:2] - expected[:2]).max() < 0.2 * eye_distance
        landmarks.append(row["landmarks"])
        assert json.loads((out / PROGRESS_FILE).read_text())["original_size"] == [3600, 4800]
        assert 0.05 < row["upscale"] < 1 and row["outside"] == 0
        with Image.open(out / row["file_name"]) as crop:
            crops[size] = np.asarray(crop.convert("L").resize((64, 64)), dtype=np.float64)
    assert landmarks[0] == landmarks[1]  # found in the same small copy, whatever the crop needs
    assert np.abs(crops[128] - crops[1024]).mean() < 6  # the same aligned face from either decode


def _descendants(pid: int) -> list[int]:
    """Processes below ``pid``: children, their children, ... (Linux /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = [], [pid]
    while frontier:
        below = [child for child, parent in parents.items() if parent in frontier]
        found += below
        frontier = below
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.slow
def test_kill_9_takes_the_workers_and_the_lock_with_it(tmp_path):
    """kill -9 of a prepare with a pool: its workers die too, and a rerun resumes the folder."""
    import signal
    import subprocess
    import sys
    import time

    fcntl = pytest.importorskip("fcntl")
    if not Path("/proc/self/stat").is_file():
        pytest.skip("needs Linux /proc to find the workers")
    src = tmp_path / "src"
    for i in range(48):  # no faces: each costs a full MTCNN search, so the run is still going when killed
        save_photo(src / f"{i:03d}.jpg", i, (256, 256))
    config = PrepareConfig(sources=[str(src)], out_dir=str(tmp_path / "out"), workers=2, auto_caption=False)
    script = (
        "import sys; from facesmith.data.config import PrepareConfig; "
        "from facesmith.data.prepare import run_prepare; "
        "run_prepare(PrepareConfig.load(sys.argv[1]))"
    )
    config.save(tmp_path / "run.toml")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "run.toml")], env=env)
    progress = tmp_path / "out" / PROGRESS_FILE
    deadline = time.monotonic() + 120
    while not (progress.is_file() and progress.read_text().count("\n") >= 1):
        assert run.poll() is None and time.monotonic() < deadline, "prepare ended before it could be killed"
        time.sleep(0.05)
    workers = _descendants(run.pid)  # the pool's workers, and whatever process started them
    assert len(workers) >= 2, "no pool workers found"
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    try:
        with open(tmp_path / "out" / ".lock", "a+") as lock:  # free at once: no worker ever held it
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(lock, fcntl.LOCK_UN)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [Path(f"/proc/{pid}/cmdline").read_text()[:200] for pid in workers if _alive(pid)]
        assert not left, f"the workers outlived their parent: {left}"
    finally:  # never leave orphans behind, also when the test fails
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert progress.read_text().count("\n") < 48, "the run finished before the kill"
    # The rerun is not refused as "being written by another": it resumes and decides the rest (all
    # "no face", so it ends as a run that kept nothing).
    config.workers = 1
    with pytest.raises(FacesmithError, match="kept 0 of 48 images"):
        run_prepare(config)
    assert progress.read_text().count("\n") == 48


def test_a_small_kohya_concept_folder_is_never_split(tmp_path):
    """A 7-image subject lost one image to the val split, unsaid (issue 16.2): folders under 20 images
    stay whole in train, and the report says which."""
    small, large = tmp_path / "kohya" / "10_alice", tmp_path / "kohya" / "2_crowd"
    for seed in range(7):
        save_photo(small / f"a{seed}.jpg", 100 + seed, SIZE, quality=95)
    for seed in range(24):
        save_photo(large / f"c{seed}.jpg", 200 + seed, SIZE, quality=95)
    out = run_prepare(
        aligned_config([tmp_path / "kohya"], tmp_path / "out", val_fraction=0.5, max_hash_distance=-1)
    )
    rows = stored_rows(out)
    alice = [r for r in rows if "/10_alice/" in r["source_file"]]
    crowd = [r for r in rows if "/2_crowd/" in r["source_file"]]
    assert len(alice) == 7 and all(r["split"] == "train" for r in alice)
    assert {r["split"] for r in crowd} == {"train", "val"}  # a large folder is still split
    assert any("10_alice" in note and "kept whole" in note for note in read_report(out)["notes"])
