"""Writers for the image, video and audio datasets (MMPromptTemplate configs), and the tiny media they point to.

Every picture, clip and sound is made here in code (a few hundred bytes each: an 8x8 image of one colour, five
frames of video, a tenth of a second of a tone), never a committed binary. Media paths written into data files are
absolute, as the loaders pass them on to `file://` URLs unchanged.
"""

from __future__ import annotations

import base64
import io
import json
import wave
from pathlib import Path
from typing import Any

from eval_jobs.coverage.data_files import path_in, write_jsonl, writer

ROWS = 4
COLOURS = [(200, 30, 30), (30, 160, 60), (40, 60, 200), (230, 200, 40), (120, 40, 160), (20, 20, 20)]
LABELS = ["laughter", "sigh", "cough", "throatclearing", "sneeze", "sniff"]  # vocalsound's classes, A-F


def image_bytes(index: int, fmt: str = "JPEG", size: int = 8) -> bytes:
    """A `size` x `size` image of one colour (the index picks it), encoded as `fmt` (JPEG, PNG, WEBP)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), COLOURS[index % len(COLOURS)]).save(buf, format=fmt)
    return buf.getvalue()


def write_image(path: Path, index: int, fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(index, fmt))
    return path


def write_wav(path: Path, index: int, seconds: float = 0.1, rate: int = 8000) -> Path:
    """A short 16-bit mono tone (its pitch from the index)."""
    import math

    path.parent.mkdir(parents=True, exist_ok=True)
    frames = bytearray()
    for t in range(int(seconds * rate)):
        sample = int(8000 * math.sin(2 * math.pi * (220 + 110 * index) * t / rate))
        frames += sample.to_bytes(2, "little", signed=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))
    return path


def write_video(path: Path, index: int, frames: int = 6, size: int = 16) -> Path:
    """A few frames of one colour as MP4 (OpenCV's mp4v, which AISBench's VideoAsset reads back with OpenCV)."""
    import cv2
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, (size, size))
    frame = np.zeros((size, size, 3), dtype=np.uint8)
    frame[:] = COLOURS[index % len(COLOURS)][::-1]  # OpenCV frames are BGR
    for _ in range(frames):
        out.write(frame)
    out.release()
    if not path.is_file() or path.stat().st_size == 0:
        raise RuntimeError(f"OpenCV wrote no video to {path} (no mp4v encoder in this build?)")
    return path


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- textvqa: questions jsonl + an annotations file beside it, images by path ---------------------------------

def write_textvqa(path: Path, answers: list[str], questions: list[str] | None = None) -> None:
    """TEXTVQADataset's files: `path` (one question per line, its image's absolute path) and
    `<stem>_annotations.json` beside it (ten answers per question, as TextVQA has)."""
    questions = questions or [f"What colour is square {i}?" for i in range(len(answers))]
    images = [write_image(path.parent / "images" / f"img{i}.jpg", i) for i in range(len(answers))]
    write_jsonl(path, [{"question_id": i, "question": q, "image": str(img)}
                       for i, (q, img) in enumerate(zip(questions, images))])
    # Ten answers that are equal but not identical dicts: the VQA accuracy compares each with the other nine.
    annotations = [{"question_id": i, "answers": [{"answer": a, "answer_id": k} for k in range(10)]}
                   for i, a in enumerate(answers)]
    (path.parent / f"{path.stem}_annotations.json").write_text(json.dumps({"annotations": annotations}))


@writer("TEXTVQADataset")
def _textvqa(dcfg: Any, root: Path) -> None:
    write_textvqa(path_in(dcfg, root), ["red", "green", "blue", "yellow"][:ROWS])


@writer("MMCustomDataset")
def _mm_custom(dcfg: Any, root: Path) -> None:
    """One row per kind of media; each row's `path` lists that kind's files."""
    path = path_in(dcfg, root)
    media = path.parent / "media"
    rows = [
        {"type": "image", "path": [str(write_image(media / "a.png", 0, "PNG")), str(write_image(media / "b.png", 1,
                                                                                                 "PNG"))],
         "question": "Which two colours are shown?", "answer": "red and green"},
        {"type": "video", "path": [str(write_video(media / "c.mp4", 2))], "question": "What colour is the clip?",
         "answer": "blue"},
        {"type": "audio", "path": [str(write_wav(media / "d.wav", 3))], "question": "Is this a tone?",
         "answer": "yes"},
    ]
    write_jsonl(path, rows)


# -- tsv sets with base64 images (VLMEvalKit's layout; the loaders write the images out as files) --------------

def _tsv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    from eval_jobs.coverage.data_files import write_csv

    write_csv(path, [header] + [[str(v) for v in row] for row in rows], delimiter="\t")


@writer("DocVQADataset", "InfoVQADataset")
def _docvqa(dcfg: Any, root: Path) -> None:
    words = ["red", "green", "blue", "yellow"]
    _tsv(path_in(dcfg, root), ["index", "image", "question", "answer"],
         [[i, b64(image_bytes(i)), f"What colour is square {i}?", repr([w])] for i, w in enumerate(words[:ROWS])])


@writer("MMStarDataset")
def _mmstar(dcfg: Any, root: Path) -> None:
    _tsv(path_in(dcfg, root), ["index", "image", "question", "A", "B", "C", "D", "answer", "category", "l2-category"],
         [[i, b64(image_bytes(i)), f"What colour is square {i}?", "red", "green", "blue", "yellow", "ABCD"[i % 4],
           "coarse perception", "colour"] for i in range(ROWS)])


@writer("MMMUProOptions10Dataset", "MMMUProVisionDataset")
def _mmmu_pro(dcfg: Any, root: Path) -> None:
    letters = "ABCDEFGHIJ"
    _tsv(path_in(dcfg, root), ["index", "image", "question", *letters, "answer", "category"],
         [[i, b64(image_bytes(i)), f"Which option names the colour of <image 1>? ({i})",
           *[f"colour {c}" for c in letters], letters[i % 10], "Art"] for i in range(ROWS)])


# -- parquet sets with image bytes ------------------------------------------------------------------------------

def _parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)


@writer("RealworldQADataset")
def _realworldqa(dcfg: Any, root: Path) -> None:
    _parquet(path_in(dcfg, root), [{"image": {"bytes": image_bytes(i, "WEBP"), "path": f"{i}.webp"},
                                    "question": f"What colour is square {i}? Answer with one word.",
                                    "answer": ["red", "green", "blue", "yellow"][i]} for i in range(ROWS)])


@writer("RefCOCODataset", "RefCOCOgDataset", "RefCOCOPlusDataset")
def _refcoco(dcfg: Any, root: Path) -> None:
    """`<split>-*.parquet` under the path: one image, its box [x, y, w, h] and the phrases that refer to it."""
    from PIL import Image

    rows = []
    for i in range(ROWS):
        buf = io.BytesIO()
        Image.new("RGB", (32, 24), COLOURS[i]).save(buf, format="JPEG")
        rows.append({"image": {"bytes": buf.getvalue(), "path": None}, "file_name": f"COCO_{i}.jpg",
                     "question_id": i, "bbox": [2.0 + i, 3.0, 10.0, 8.0], "answer": [f"the square number {i}"]})
    _parquet(path_in(dcfg, root, f"{dcfg['split']}-00000-of-00001.parquet"), rows)


@writer("MMMUDataset")
def _mmmu(dcfg: Any, root: Path) -> None:
    """One subject directory (`Art/validation-*.parquet`): multiple-choice rows with an `<image 1>` placeholder."""
    rows = [{"id": f"validation_Art_{i}", "question": f"What colour is <image 1>? ({i})",
             "options": repr(["red", "green", "blue", "yellow"]), "answer": "ABCD"[i % 4],
             "image_1": {"bytes": image_bytes(i, "PNG"), "path": f"{i}.png"}, "question_type": "multiple-choice",
             "subfield": "Colour"} for i in range(ROWS)]
    _parquet(path_in(dcfg, root, "Art", f"{dcfg.get('split', 'validation')}-00000-of-00001.parquet"), rows)


@writer("MathVisionDataset")
def _mathvision(dcfg: Any, root: Path) -> None:
    """`data/<split>-*.parquet`: multiple-choice and open rows, levels 1-5."""
    rows = []
    for i in range(ROWS):
        options = ["1", "2", "3", "4", "5"] if i % 2 == 0 else []
        rows.append({"id": str(i), "question": f"How many squares are there? ({i})", "options": options,
                     "answer": "ABCDE"[i % 5] if options else str(i + 1), "level": 1 + i % 5,
                     "subject": "counting", "solution": "",
                     "decoded_image": {"bytes": image_bytes(i, "PNG"), "path": f"{i}.png"}})
    _parquet(path_in(dcfg, root, "data", f"{dcfg.get('split', 'test')}-00000-of-00001.parquet"), rows)


# -- video and audio ----------------------------------------------------------------------------------------------

@writer("VideoBenchDataset")
def _videobench(dcfg: Any, root: Path) -> None:
    """`answer/ANSWER.json` ({set: {key: answer}}) and a `*new.json` of questions whose `vid_path` names the clip
    (its parent directory is the set's name)."""
    base = path_in(dcfg, root)
    questions, answers = {}, {}
    for i in range(ROWS):
        clip = write_video(base / "videos" / "Tiny" / f"clip{i}.mp4", i)
        key = f"Tiny_{i}"
        questions[key] = {"vid_path": str(clip), "video_id": f"clip{i}", "question": "What colour is the clip?",
                          "choices": {"A": "red", "B": "green", "C": "blue", "D": "yellow"}}
        answers[key] = {"answer": "ABCD"[i % 4]}  # VideoBenchEvaluator reads the letter from a dict
    (base / "answer").mkdir(parents=True, exist_ok=True)
    (base / "answer" / "ANSWER.json").write_text(json.dumps({"Tiny": answers}))
    (base / "Tiny_QA_new.json").write_text(json.dumps(questions))


@writer("VideoMMEDataset")
def _videomme(dcfg: Any, root: Path) -> None:
    """The question parquet; the clips go to `video_path` (a relative one under the data dir, where evalcluster
    resolves it: eval_jobs.datasets.MEDIA_DIR_FIELDS)."""
    video_dir = Path(dcfg["video_path"])
    for i in range(ROWS):
        write_video((video_dir if video_dir.is_absolute() else root / video_dir) / f"vid{i}.mp4", i)
    _parquet(path_in(dcfg, root), [
        {"videoID": f"vid{i}", "question": "What colour is the clip?",
         "options": ["A. red", "B. green", "C. blue", "D. yellow"], "answer": "ABCD"[i % 4], "duration": "short",
         "domain": "Knowledge", "sub_category": "Colour", "task_type": "Object Recognition"} for i in range(ROWS)])


@writer("VocalSoundDataset")
def _vocalsound(dcfg: Any, root: Path) -> None:
    """A directory of `<id>_<label>.wav` files: the label is the answer."""
    base = path_in(dcfg, root)
    for i in range(ROWS):
        write_wav(base / f"f{i:04d}_{LABELS[i]}.wav", i)


@writer("OCRBenchV2Dataset")
def _ocrbench_v2(dcfg: Any, root: Path) -> None:
    """OCRBench_v2.tsv: base64 images, and the fields its evaluator reads (answers as a Python list literal, the
    task `category` that picks the metric; "without ..." where a row has no bbox, content or eval method)."""
    words = ["red", "green", "blue", "yellow"]
    _tsv(path_in(dcfg, root), ["index", "image", "question", "answer", "category", "content", "bbox_raw", "eval"],
         [[i, b64(image_bytes(i)), f"What colour is square {i}?", repr([w]), "text recognition en",
           "without content", "without bbox", "without eval"] for i, w in enumerate(words[:ROWS])])


@writer("OmniDocBenchDataset")
def _omnidocbench(dcfg: Any, root: Path) -> None:
    """OmniDocBench.json: one page per image, its layout ground truth (a title, a paragraph, a display formula
    and a table, each with its reading order) as OmniDocBench annotates pages; the images in `image_path`."""
    pages = []
    for i in range(ROWS):
        name = f"page_{i}.jpg"
        write_image(root / dcfg["image_path"] / name, i)
        box = [0, 0, 8, 0, 8, 8, 0, 8]
        dets = [
            {"category_type": "title", "text": f"Square {i}", "order": 1},
            {"category_type": "text_block", "text": f"This page shows square number {i} in one colour.", "order": 2},
            {"category_type": "equation_isolated", "latex": f"$$x^{{2}} + {i} = y$$", "order": 3},
            {"category_type": "table", "html": f"<table><tr><td>square</td><td>{i}</td></tr></table>",
             "latex": f"\\begin{{tabular}}{{cc}} square & {i} \\\\ \\end{{tabular}}", "order": 4},
        ]
        pages.append({
            "layout_dets": [dict(d, anno_id=n, poly=box, ignore=False, attribute={}) for n, d in enumerate(dets)],
            "page_info": {"image_path": name, "page_no": i, "width": 8, "height": 8,
                          "page_attribute": {"data_source": "book", "language": "english", "layout": "single_column"}},
            "extra": {"relation": []},
        })
    path = path_in(dcfg, root)
    path.write_text(json.dumps(pages), encoding="utf-8")


@writer("HLEDataset")
def _hle(dcfg: Any, root: Path) -> None:
    """HLE's parquet: `question`, `answer`, and `image` (a data URL, or empty for a text-only question)."""
    _parquet(path_in(dcfg, root), [
        {"id": f"made-up-{i}", "question": f"What colour is square {i}?" if i % 2 else f"What is {i} + {i}?",
         "answer": ["red", "green", "blue", "yellow"][i] if i % 2 else str(2 * i),
         "image": f"data:image/jpeg;base64,{b64(image_bytes(i))}" if i % 2 else ""} for i in range(ROWS)])
