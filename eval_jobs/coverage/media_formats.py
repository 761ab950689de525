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
